// SPDX-License-Identifier: MIT
// Data-plane measurements: channel round trips (one pair and four pairs on two cores),
// one-to-one throughput on the copy path and the zero-copy path, four-to-one fan-in, and pool
// alloc+free. Processes are forked; they share one pool.
#include "common.hpp"

#include <dragon/channel.hpp>

#include <atomic>
#include <cstring>
#include <string>

namespace {

using dragon::Channel;
using dragon::Message;
using dragon::Pool;
using dragon::Timeout;

Pool* gPool = nullptr;

Channel makeChannel(std::uint32_t capacity, std::uint32_t inlineSize) {
  dragon::ChannelOptions o;
  o.capacity = capacity;
  o.inlineSize = inlineSize;
  auto c = Channel::create(*gPool, o);
  if (!c) {
    std::fprintf(stderr, "channel: %s\n", c.error().toString().c_str());
    _exit(1);
  }
  return std::move(*c);
}

void check(const dragon::Status& st, const char* what) {
  if (!st.isOk()) {
    std::fprintf(stderr, "%s: %s\n", what, st.toString().c_str());
    _exit(1);
  }
}

// Average round trip in microseconds, `pairs` pairs at once.
double rttUs(std::size_t size, int iters, int pairs) {
  auto* start = bench::sharedNew<std::atomic<int>>();
  auto* total = bench::sharedNew<std::atomic<double>>();
  std::vector<Channel> chans;
  std::vector<pid_t> kids;
  for (int p = 0; p < pairs; ++p) {
    chans.push_back(makeChannel(4, 4096));
    chans.push_back(makeChannel(4, 4096));
  }
  for (int p = 0; p < pairs; ++p) {
    Channel* ping = &chans[2 * static_cast<std::size_t>(p)];
    Channel* pong = &chans[2 * static_cast<std::size_t>(p) + 1];
    kids.push_back(bench::forkRun([=] {
      std::vector<std::byte> buf(size);
      for (int i = 0; i < iters; ++i) {
        check(ping->recv(buf, Timeout::forever()).status(), "echo recv");
        check(pong->send(buf, Timeout::forever()), "echo send");
      }
    }));
    kids.push_back(bench::forkRun([=] {
      std::vector<std::byte> buf(size);
      while (start->load() == 0) __builtin_ia32_pause();
      const double t0 = bench::nowSeconds();
      for (int i = 0; i < iters; ++i) {
        check(ping->send(buf, Timeout::forever()), "ping send");
        check(pong->recv(buf, Timeout::forever()).status(), "pong recv");
      }
      const double us = (bench::nowSeconds() - t0) * 1e6 / iters;
      double cur = total->load();
      while (!total->compare_exchange_weak(cur, cur + us)) {
      }
    }));
  }
  start->store(1);
  for (pid_t k : kids) bench::reap(k);
  for (auto& c : chans) check(c.destroy(), "destroy");
  const double avg = total->load() / pairs;
  munmap(start, sizeof *start);
  munmap(total, sizeof *total);
  return avg;
}

// One-way throughput: `senders` processes send `count` messages in all to one receiver.
// Large messages (>= 1 MiB) use a 2-slot ring (double buffering keeps a block in cache between
// its writer and its reader; 8 slots measured 1.5x slower at 16 MiB), small ones 64 slots.
// Returns messages per second. Copy path (send/recv into buffers) or zero copy (sendBlock of a
// block the sender fills in place, recv into a Message read in place).
double throughput(std::size_t size, long count, int senders, bool zeroCopy) {
  Channel ch = makeChannel(size >= (1 << 20) ? 2 : 64, 256);
  auto* start = bench::sharedNew<std::atomic<int>>();
  std::vector<pid_t> kids;
  for (int s = 0; s < senders; ++s) {
    kids.push_back(bench::forkRun([&, s] {
      std::vector<std::byte> buf(zeroCopy ? 0 : size, std::byte{1});
      while (start->load() == 0) __builtin_ia32_pause();
      const long mine = count / senders + (s < count % senders ? 1 : 0);
      for (long i = 0; i < mine; ++i) {
        if (zeroCopy) {
          auto a = gPool->alloc(size, Timeout::forever());
          check(a.status(), "alloc");
          std::memcpy(gPool->pointer(*a), &i, sizeof i);  // produce in place (header only)
          check(ch.sendBlock(*a, size, Timeout::forever()), "sendBlock");
        } else {
          check(ch.send(buf, Timeout::forever()), "send");
        }
      }
    }));
  }
  std::vector<std::byte> buf(size);
  Message m;
  start->store(1);
  const double t0 = bench::nowSeconds();
  for (long i = 0; i < count; ++i) {
    if (zeroCopy) {
      check(ch.recv(m, Timeout::forever()), "recv message");
      long v = 0;
      std::memcpy(&v, m.data().data(), sizeof v);
      asm volatile("" : : "r"(v));
      m.reset();
    } else {
      check(ch.recv(buf, Timeout::forever()).status(), "recv");
    }
  }
  const double rate = static_cast<double>(count) / (bench::nowSeconds() - t0);
  for (pid_t k : kids) bench::reap(k);
  check(ch.destroy(), "destroy");
  munmap(start, sizeof *start);
  return rate;
}

double poolAllocFreeNs() {
  const int n = 5'000'000;
  const double t0 = bench::nowSeconds();
  for (int i = 0; i < n; ++i) {
    auto a = gPool->alloc(64 + (i & 1));
    if (!a) _exit(1);
    (void)gPool->free(*a);
  }
  return (bench::nowSeconds() - t0) * 1e9 / n;
}

}  // namespace

int main() {
  dragon::PoolOptions po;
  po.size = std::size_t{256} << 20;
  auto pool = Pool::create(po);
  if (!pool) {
    std::fprintf(stderr, "pool: %s\n", pool.error().toString().c_str());
    return 1;
  }
  gPool = &*pool;
  using bench::kReps;
  using bench::median;
  using bench::metric;
  metric("chan_rtt_8B", median(kReps, [] { return rttUs(8, 200000, 1); }), "us");
  metric("chan_rtt_4KiB", median(kReps, [] { return rttUs(4096, 100000, 1); }), "us");
  metric("chan_rtt_8B_4pairs", median(kReps, [] { return rttUs(8, 10000, 4); }), "us");
  metric("chan_tput_64B", median(kReps, [] { return throughput(64, 2000000, 1, false); }) / 1e6, "Mmsg/s");
  metric("chan_fanin4_64B", median(kReps, [] { return throughput(64, 2000000, 4, false); }) / 1e6, "Mmsg/s");
  metric("chan_copy_4KiB", median(kReps, [] { return throughput(4096, 500000, 1, false); }) * 4096 / 1e9, "GB/s");
  metric("chan_copy_1MiB", median(kReps, [] { return throughput(1 << 20, 4000, 1, false); }) * (1 << 20) / 1e9, "GB/s");
  metric("chan_copy_16MiB", median(kReps, [] { return throughput(16 << 20, 300, 1, false); }) * (16 << 20) / 1e9, "GB/s");
  metric("chan_zc_1MiB", median(kReps, [] { return throughput(1 << 20, 200000, 1, true); }) * (1 << 20) / 1e9, "GB/s");
  metric("chan_zc_16MiB", median(kReps, [] { return throughput(16 << 20, 200000, 1, true); }) * (16 << 20) / 1e9, "GB/s");
  metric("pool_alloc_free", median(kReps, poolAllocFreeNs), "ns");
  return 0;
}
