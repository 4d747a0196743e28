// SPDX-License-Identifier: MIT
// A parallel pipeline over Dragon channels: the parent fills 1 MiB blocks of samples straight
// into pool memory and hands them to worker processes without copying (sendBlock); the workers
// read them in place, reduce each to a sum and a histogram, and send the small result back
// inline. dragond provides everything: the pool and channels (as memfds it hands out), the
// worker processes (spawned with their output forwarded to the launcher), their exit codes.
// Workers find the channels by descriptor strings passed in their argv.
//
//   dragon histogram_pipeline [--workers N] [--blocks N]
#include <dragon/client.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <unistd.h>
#include <vector>

namespace {

using namespace std::chrono_literals;
constexpr std::size_t kSamples = (std::size_t{1} << 20) / sizeof(double);
constexpr int kBins = 16;

struct Result {
  std::uint32_t task;
  std::uint32_t worker;
  double sum;
  std::uint64_t bins[kBins];
};

void reduce(const double* x, std::size_t n, double* sum, std::uint64_t* bins) {
  double s = 0;
  for (int b = 0; b < kBins; ++b) bins[b] = 0;
  for (std::size_t i = 0; i < n; ++i) {
    s += x[i];
    int b = static_cast<int>(x[i] * kBins);
    bins[b < 0 ? 0 : (b >= kBins ? kBins - 1 : b)]++;
  }
  *sum = s;
}

int fail(const char* what, const dragon::Status& st) {
  std::fprintf(stderr, "histogram_pipeline: %s: %s\n", what, st.toString().c_str());
  return 1;
}

int runWorker(const char* workDesc, const char* resultDesc, std::uint32_t index) {
  auto wd = dragon::ObjectDescriptor::fromString(workDesc);
  auto rd = dragon::ObjectDescriptor::fromString(resultDesc);
  if (!wd || !rd) return fail("worker descriptors", wd ? rd.error() : wd.error());
  auto client = dragon::Client::connect();
  if (!client) return fail("worker connect to dragond", client.error());
  auto workCh = client->attachChannel(*wd);
  auto resultCh = client->attachChannel(*rd);
  if (!workCh || !resultCh) {
    return fail("worker attach channel", workCh ? resultCh.error() : workCh.error());
  }
  dragon::Channel* work = &(*workCh)->channel();
  dragon::Channel* results = &(*resultCh)->channel();
  dragon::Message m;
  for (;;) {
    dragon::Status st = work->recv(m, dragon::Timeout::forever());
    if (st.code() == dragon::StatusCode::ChannelClosed) return 0;
    if (!st.isOk()) return fail("worker recv", st);
    // The block is read in place: the samples never get copied.
    Result r{};
    std::memcpy(&r.task, m.data().data(), sizeof r.task);
    const auto* x = reinterpret_cast<const double*>(m.data().data() + 64);
    reduce(x, (m.size() - 64) / sizeof(double), &r.sum, r.bins);
    r.worker = index;
    m.reset();  // frees the block back to the pool
    st = results->send(std::as_bytes(std::span(&r, 1)), dragon::Timeout::forever());
    if (!st.isOk()) return fail("worker send", st);
  }
}

int runParent(int workers, int blocks) {
  auto client = dragon::Client::connect();
  if (!client) {
    return fail("connect to dragond (run me as `dragon histogram_pipeline`)", client.error());
  }
  auto poolHandle = client->createPool(std::size_t{64} << 20);
  if (!poolHandle) return fail("create pool", poolHandle.error());
  dragon::Pool* pool = poolHandle->get();
  dragon::ChannelOptions co;
  co.capacity = 16;
  co.inlineSize = 256;
  auto workCh = client->createChannel(pool->descriptor(), co);
  auto resultCh = client->createChannel(pool->descriptor(), co);
  if (!workCh || !resultCh) {
    return fail("create channel", workCh ? resultCh.error() : workCh.error());
  }
  dragon::Channel* work = &(*workCh)->channel();
  dragon::Channel* results = &(*resultCh)->channel();

  char self[4096];
  const ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
  if (len <= 0) return fail("readlink", dragon::Status::fromErrno("/proc/self/exe", errno));
  self[len] = '\0';
  // Workers: a process group started by dragond; their output reaches the launcher labelled.
  dragon::SpawnOptions so;
  so.argv = {self, "--worker", work->descriptor().toString(), results->descriptor().toString()};
  so.label = "[worker {puid}] ";
  std::vector<std::uint64_t> puids;
  for (int w = 0; w < workers; ++w) {
    so.argv.resize(4);
    so.argv.push_back(std::to_string(w));
    auto p = client->spawn(so);
    if (!p) return fail("spawn worker", p.error());
    puids.push_back(p->front().puid);
  }

  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> dist(0.0, 1.0);
  std::vector<double> expectSum(static_cast<std::size_t>(blocks));
  std::vector<std::uint64_t> expectBins(static_cast<std::size_t>(blocks) * kBins);
  const auto t0 = std::chrono::steady_clock::now();
  int received = 0;
  int mismatches = 0;
  std::vector<int> perWorker(static_cast<std::size_t>(workers));
  auto collect = [&](dragon::Timeout t) -> dragon::Status {
    Result r{};
    auto n = results->recv(std::as_writable_bytes(std::span(&r, 1)), t);
    if (!n) return n.error();
    const double want = expectSum[r.task];
    if (std::fabs(r.sum - want) > 1e-6 * std::fabs(want) ||
        std::memcmp(r.bins, &expectBins[std::size_t{r.task} * kBins], sizeof r.bins) != 0) {
      mismatches++;
    }
    perWorker[r.worker]++;
    received++;
    return dragon::Status::ok();
  };
  for (int b = 0; b < blocks; ++b) {
    // Write the samples straight into a pool block, then hand the block over.
    auto a = pool->alloc(64 + kSamples * sizeof(double), dragon::Timeout::after(30s));
    if (!a) return fail("alloc block", a.error());
    auto* base = static_cast<std::byte*>(pool->pointer(*a));
    const auto task = static_cast<std::uint32_t>(b);
    std::memcpy(base, &task, sizeof task);
    auto* x = reinterpret_cast<double*>(base + 64);
    for (std::size_t i = 0; i < kSamples; ++i) x[i] = dist(rng);
    reduce(x, kSamples, &expectSum[task], &expectBins[std::size_t{task} * kBins]);
    dragon::Status st = work->sendBlock(*a, a->size, dragon::Timeout::after(30s));
    if (!st.isOk()) return fail("send block", st);
    while (results->readable() && received < blocks) {
      st = collect(dragon::Timeout::none());
      if (!st.isOk()) return fail("collect", st);
    }
  }
  while (received < blocks) {
    dragon::Status st = collect(dragon::Timeout::after(30s));
    if (!st.isOk()) return fail("collect", st);
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  (void)work->close();
  int bad = 0;
  auto exits = client->wait(puids, dragon::Timeout::after(60s));
  if (!exits) return fail("wait for workers", exits.error());
  for (const auto& e : *exits) bad += e.shellCode() != 0;
  std::printf("histogram_pipeline: %d blocks of 1 MiB through %d worker processes in %.3f s "
              "(%.2f GB/s handed over without copies)\n",
              blocks, workers, secs, blocks * 1.048576e-3 / secs);
  for (int w = 0; w < workers; ++w) {
    std::printf("  worker %d reduced %d blocks\n", w, perWorker[static_cast<std::size_t>(w)]);
  }
  const auto stats = pool->stats();
  std::printf("  results verified: %d of %d match; pool back to %llu allocations\n",
              received - mismatches, received,
              stats ? static_cast<unsigned long long>(stats->allocationCount) : 0ull);
  return mismatches == 0 && bad == 0 && received == blocks ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 5 && std::strcmp(argv[1], "--worker") == 0) {
    return runWorker(argv[2], argv[3], static_cast<std::uint32_t>(std::atoi(argv[4])));
  }
  int workers = 2;
  int blocks = 256;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--workers") == 0 && i + 1 < argc) {
      workers = std::atoi(argv[++i]);
    } else if (std::strcmp(argv[i], "--blocks") == 0 && i + 1 < argc) {
      blocks = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: histogram_pipeline [--workers N] [--blocks N]\n");
      return 2;
    }
  }
  if (workers < 1 || workers > 64 || blocks < 1 || blocks > 1000000) {
    std::fprintf(stderr, "histogram_pipeline: --workers must be 1..64, --blocks 1..1000000\n");
    return 2;
  }
  return runParent(workers, blocks);
}
