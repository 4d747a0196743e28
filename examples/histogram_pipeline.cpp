// SPDX-License-Identifier: MIT
// A parallel pipeline over Dragon channels: the parent fills 1 MiB blocks of samples straight
// into pool memory and hands them to worker processes without copying (sendBlock); the workers
// read them in place, reduce each to a sum and a histogram, and send the small result back
// inline. Workers are separate programs (posix_spawn of this binary) that attach to the pool
// through an inherited fd and to the channels through descriptor strings.
//
//   histogram_pipeline [--workers N] [--blocks N]
#include <dragon/channel.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <spawn.h>
#include <string>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

extern char** environ;

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

int runWorker(int fd, const char* poolDesc, const char* workDesc, const char* resultDesc,
              std::uint32_t index) {
  auto pd = dragon::ObjectDescriptor::fromString(poolDesc);
  auto wd = dragon::ObjectDescriptor::fromString(workDesc);
  auto rd = dragon::ObjectDescriptor::fromString(resultDesc);
  if (!pd || !wd || !rd) return fail("worker descriptors", pd ? (wd ? rd.error() : wd.error()) : pd.error());
  auto pool = dragon::Pool::attach(dragon::UniqueFd(fd), *pd);
  if (!pool) return fail("worker attach pool", pool.error());
  auto work = dragon::Channel::attach(*pool, *wd);
  auto results = dragon::Channel::attach(*pool, *rd);
  if (!work || !results) return fail("worker attach channel", work ? results.error() : work.error());
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
  dragon::PoolOptions po;
  po.size = std::size_t{64} << 20;
  auto pool = dragon::Pool::create(po);
  if (!pool) return fail("create pool", pool.error());
  dragon::ChannelOptions co;
  co.capacity = 16;
  co.inlineSize = 256;
  auto work = dragon::Channel::create(*pool, co);
  auto results = dragon::Channel::create(*pool, co);
  if (!work || !results) return fail("create channel", work ? results.error() : work.error());

  char self[4096];
  const ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
  if (len <= 0) return fail("readlink", dragon::Status::fromErrno("/proc/self/exe", errno));
  self[len] = '\0';
  const int inheritFd = dup(pool->fd());  // no O_CLOEXEC: the workers inherit it
  const std::string fdArg = std::to_string(inheritFd);
  const std::string poolArg = pool->descriptor().toString();
  const std::string workArg = work->descriptor().toString();
  const std::string resultArg = results->descriptor().toString();
  std::vector<pid_t> pids;
  for (int w = 0; w < workers; ++w) {
    const std::string idx = std::to_string(w);
    const char* argv[] = {self, "--worker", fdArg.c_str(), poolArg.c_str(), workArg.c_str(),
                          resultArg.c_str(), idx.c_str(), nullptr};
    pid_t pid = 0;
    if (posix_spawn(&pid, self, nullptr, nullptr, const_cast<char**>(argv), environ) != 0) {
      return fail("spawn worker", dragon::Status::fromErrno("posix_spawn", errno));
    }
    pids.push_back(pid);
  }
  close(inheritFd);

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
  for (pid_t p : pids) {
    int status = 0;
    waitpid(p, &status, 0);
    bad += !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
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
  if (argc == 7 && std::strcmp(argv[1], "--worker") == 0) {
    return runWorker(std::atoi(argv[2]), argv[3], argv[4], argv[5],
                     static_cast<std::uint32_t>(std::atoi(argv[6])));
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
