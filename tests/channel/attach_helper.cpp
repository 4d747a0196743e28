// SPDX-License-Identifier: MIT
// Helper for the attach test: `attach_helper FD POOL_DESC CHANNEL_DESC` attaches to the pool
// through the inherited fd and sends one message on the channel.
#include <dragon/channel.hpp>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <unistd.h>

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: attach_helper FD POOL_DESC CHANNEL_DESC\n");
    return 2;
  }
  auto pd = dragon::ObjectDescriptor::fromString(argv[2]);
  auto cd = dragon::ObjectDescriptor::fromString(argv[3]);
  if (!pd || !cd) {
    std::fprintf(stderr, "bad descriptor\n");
    return 3;
  }
  auto pool = dragon::Pool::attach(dragon::UniqueFd(std::atoi(argv[1])), *pd);
  if (!pool) {
    std::fprintf(stderr, "%s\n", pool.error().toString().c_str());
    return 4;
  }
  auto ch = dragon::Channel::attach(*pool, *cd);
  if (!ch) {
    std::fprintf(stderr, "%s\n", ch.error().toString().c_str());
    return 5;
  }
  const std::string msg = "hello from pid " + std::to_string(getpid());
  return ch->send(std::as_bytes(std::span(msg)), dragon::Timeout::after(std::chrono::seconds(10))).isOk() ? 0 : 6;
}
