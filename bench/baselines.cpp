// SPDX-License-Identifier: MIT
// The baselines the data plane is measured against, in the same run: a plain futex ping-pong
// (wake and sleep every turn), a spin-then-futex ping-pong (spin first, sleep and wake only
// when needed), both also as 4 pairs at once on 2 cores, memcpy bandwidth, and malloc+free.
#include "common.hpp"

#include <atomic>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <linux/futex.h>
#include <sys/syscall.h>

namespace {

void futexWait(std::atomic<std::uint32_t>* w, std::uint32_t v) {
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(w), FUTEX_WAIT, v, nullptr, nullptr, 0);
}
void futexWake(std::atomic<std::uint32_t>* w) {
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(w), FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
}

struct alignas(64) Turn {
  std::atomic<std::uint32_t> seq{0};
  alignas(64) std::atomic<std::uint32_t> sleeping{0};
};

struct PingPong {
  Turn toChild;
  Turn toParent;
  // Payload buffers, one per direction, for the ping-pongs that carry a message.
  alignas(64) char toChildData[4096];
  alignas(64) char toParentData[4096];
};

// Waits until t.seq == want. Spins up to `spins` first (0: plain futex, every wait sleeps).
void await(Turn& t, std::uint32_t want, int spins) {
  for (int i = 0; i < spins; ++i) {
    if (t.seq.load(std::memory_order_acquire) == want) return;
    __builtin_ia32_pause();
  }
  for (;;) {
    std::uint32_t v = t.seq.load(std::memory_order_acquire);
    if (v == want) return;
    t.sleeping.store(1, std::memory_order_seq_cst);
    if (t.seq.load(std::memory_order_seq_cst) == want) return;
    futexWait(&t.seq, v);
  }
}

void post(Turn& t, std::uint32_t v, bool alwaysWake) {
  t.seq.store(v, std::memory_order_seq_cst);
  if (alwaysWake || t.sleeping.exchange(0, std::memory_order_seq_cst) != 0) futexWake(&t.seq);
}

// Round-trip time in microseconds over `iters` round trips, for `pairs` pairs at once. With
// `payload` > 0 each turn also copies that many bytes into shared memory and out again, as any
// message-passing ping-pong must.
double pingPongUs(int iters, int spins, int pairs, std::size_t payload = 0) {
  const bool plain = spins == 0;
  std::vector<PingPong*> pp;
  std::vector<pid_t> kids;
  auto* start = bench::sharedNew<std::atomic<int>>();
  auto* done = bench::sharedNew<std::atomic<int>>();
  auto* total = bench::sharedNew<std::atomic<double>>();
  for (int p = 0; p < pairs; ++p) {
    PingPong* s = bench::sharedNew<PingPong>();
    pp.push_back(s);
    kids.push_back(bench::forkRun([=] {
      char local[4096] = {};
      for (std::uint32_t i = 1; i <= static_cast<std::uint32_t>(iters); ++i) {
        await(s->toChild, i, spins);
        if (payload > 0) std::memcpy(local, s->toChildData, payload);
        if (payload > 0) std::memcpy(s->toParentData, local, payload);
        post(s->toParent, i, plain);
      }
    }));
    kids.push_back(bench::forkRun([=] {
      while (start->load() == 0) __builtin_ia32_pause();
      char local[4096] = {};
      const double t0 = bench::nowSeconds();
      for (std::uint32_t i = 1; i <= static_cast<std::uint32_t>(iters); ++i) {
        if (payload > 0) std::memcpy(s->toChildData, local, payload);
        post(s->toChild, i, plain);
        await(s->toParent, i, spins);
        if (payload > 0) std::memcpy(local, s->toParentData, payload);
      }
      const double us = (bench::nowSeconds() - t0) * 1e6 / iters;
      double cur = total->load();
      while (!total->compare_exchange_weak(cur, cur + us)) {
      }
      done->fetch_add(1);
    }));
  }
  start->store(1);
  for (pid_t k : kids) bench::reap(k);
  const double avg = total->load() / pairs;
  for (auto* s : pp) munmap(s, sizeof *s);
  munmap(start, sizeof *start);
  munmap(done, sizeof *done);
  munmap(total, sizeof *total);
  return avg;
}

double memcpyGBs(std::size_t size) {
  std::vector<char> a(size, 1), b(size, 2);
  const std::size_t rounds = std::max<std::size_t>(20, (std::size_t{2} << 30) / size);
  const double t0 = bench::nowSeconds();
  for (std::size_t r = 0; r < rounds; ++r) {
    std::memcpy(b.data(), a.data(), size);
    asm volatile("" : : "r"(b.data()) : "memory");
    a[r % size] = static_cast<char>(r);
  }
  return static_cast<double>(size) * rounds / (bench::nowSeconds() - t0) / 1e9;
}

double mallocFreeNs() {
  const int n = 5'000'000;
  const double t0 = bench::nowSeconds();
  for (int i = 0; i < n; ++i) {
    void* p = std::malloc(64 + (i & 1));
    asm volatile("" : : "r"(p) : "memory");
    std::free(p);
  }
  return (bench::nowSeconds() - t0) * 1e9 / n;
}

}  // namespace

int main() {
  bench::metric("futex_rtt", bench::median(bench::kReps, [] { return pingPongUs(20000, 0, 1); }), "us");
  bench::metric("spin_futex_rtt_word", bench::median(bench::kReps, [] { return pingPongUs(200000, 4000, 1); }), "us");
  bench::metric("spin_futex_rtt_8B", bench::median(bench::kReps, [] { return pingPongUs(200000, 4000, 1, 8); }), "us");
  bench::metric("spin_futex_rtt_4KiB", bench::median(bench::kReps, [] { return pingPongUs(100000, 4000, 1, 4096); }), "us");
  bench::metric("futex_rtt_4pairs", bench::median(bench::kReps, [] { return pingPongUs(10000, 0, 4); }), "us");
  bench::metric("memcpy_64B", bench::median(bench::kReps, [] { return memcpyGBs(64); }), "GB/s");
  bench::metric("memcpy_4KiB", bench::median(bench::kReps, [] { return memcpyGBs(4096); }), "GB/s");
  bench::metric("memcpy_1MiB", bench::median(bench::kReps, [] { return memcpyGBs(1 << 20); }), "GB/s");
  bench::metric("memcpy_16MiB", bench::median(bench::kReps, [] { return memcpyGBs(16 << 20); }), "GB/s");
  bench::metric("malloc_free", bench::median(bench::kReps, mallocFreeNs), "ns");
  return 0;
}
