// SPDX-License-Identifier: MIT
// The PMIx bootstrap: the launcher as a PMIx client of whatever server started it (slurmstepd
// under `srun --mpi=pmix`, Open MPI's mpirun). Built as a module so that libpmix is needed only
// where it is used.
#include "daemon/bootstrap.hpp"

#include <pmix.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <sched.h>
#include <string>
#include <unistd.h>

namespace dragon::bootstrap {
namespace {

Status pmixError(const std::string& what, pmix_status_t rc) {
  return Status(rc == PMIX_ERR_TIMEOUT ? StatusCode::Timeout : StatusCode::SystemError,
                what + ": " + PMIx_Error_string(rc));
}

// PMIx servers differ in the integer type of a key (uint16 for one, uint32 for another).
bool toUint(const pmix_value_t& v, std::uint32_t& out) {
  switch (v.type) {
    case PMIX_UINT8: out = v.data.uint8; return true;
    case PMIX_UINT16: out = v.data.uint16; return true;
    case PMIX_UINT32: out = v.data.uint32; return true;
    case PMIX_UINT64: out = static_cast<std::uint32_t>(v.data.uint64); return true;
    case PMIX_INT: out = static_cast<std::uint32_t>(v.data.integer); return v.data.integer >= 0;
    case PMIX_INT32: out = static_cast<std::uint32_t>(v.data.int32); return v.data.int32 >= 0;
    case PMIX_SIZE: out = static_cast<std::uint32_t>(v.data.size); return true;
    default: return false;
  }
}

// The CPUs the job was granted on this node: those this process may run on, and, under Slurm,
// at most SLURM_CPUS_ON_NODE (without task binding, TaskPlugin=task/none, the affinity mask is
// the whole node whatever the job was granted).
std::uint32_t grantedCpus() {
  std::uint32_t cpus = 0;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) cpus = static_cast<std::uint32_t>(CPU_COUNT(&set));
  if (cpus == 0) {
    const long n = sysconf(_SC_NPROCESSORS_ONLN);
    cpus = n > 0 ? static_cast<std::uint32_t>(n) : 1;
  }
  if (const char* slurm = std::getenv("SLURM_CPUS_ON_NODE")) {
    char* end = nullptr;
    const unsigned long granted = std::strtoul(slurm, &end, 10);
    if (end != slurm && *end == '\0' && granted > 0 && granted < cpus) {
      cpus = static_cast<std::uint32_t>(granted);
    }
  }
  return cpus;
}

// One non-blocking fence's outcome, set by PMIx's progress thread. Shared with its callback,
// which may come after the wait for it has given up.
struct FenceOutcome {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  pmix_status_t status = PMIX_SUCCESS;

  static void complete(pmix_status_t status, void* cbdata) {
    auto* self = static_cast<std::shared_ptr<FenceOutcome>*>(cbdata);
    {
      std::lock_guard lk((*self)->mu);
      (*self)->done = true;
      (*self)->status = status;
    }
    (*self)->cv.notify_all();
    delete self;
  }
};

class PmixBootstrap final : public Bootstrap {
 public:
  ~PmixBootstrap() override {
    if (initialized_) (void)PMIx_Finalize(nullptr, 0);
  }

  Status init() {
    const pmix_status_t rc = PMIx_Init(&me_, nullptr, 0);
    if (rc != PMIX_SUCCESS) return pmixError("PMIx_Init", rc);
    initialized_ = true;
    PMIX_PROC_CONSTRUCT(&wildcard_);
    PMIX_LOAD_PROCID(&wildcard_, me_.nspace, PMIX_RANK_WILDCARD);
    facts_.job = me_.nspace;
    facts_.rank = me_.rank;
    DRAGON_TRY(getUint(wildcard_, PMIX_JOB_SIZE, facts_.size, true));
    DRAGON_TRY(getUint(me_, PMIX_LOCAL_RANK, facts_.localRank, true));
    DRAGON_TRY(getUint(wildcard_, PMIX_LOCAL_SIZE, facts_.localSize, true));
    DRAGON_TRY(getUint(me_, PMIX_NODEID, facts_.nodeId, true));
    facts_.nodeCount = 0;
    DRAGON_TRY(getUint(wildcard_, PMIX_NUM_NODES, facts_.nodeCount, false));
    if (facts_.nodeCount == 0) facts_.nodeCount = facts_.nodeId + 1;  // at least
    // The node's own name; PMIx's PMIX_HOSTNAME only if it has none. (mpirun gives there
    // whatever --host said, an address as often as not.)
    char host[256] = {};
    (void)gethostname(host, sizeof host - 1);
    facts_.hostname = host;
    pmix_value_t* v = nullptr;
    if (facts_.hostname.empty() &&
        PMIx_Get(&me_, PMIX_HOSTNAME, nullptr, 0, &v) == PMIX_SUCCESS && v != nullptr) {
      if (v->type == PMIX_STRING && v->data.string != nullptr) facts_.hostname = v->data.string;
      PMIX_VALUE_RELEASE(v);
    }
    facts_.cpus = grantedCpus();
    return Status::ok();
  }

  std::string_view name() const override { return "pmix"; }
  const JobFacts& facts() const override { return facts_; }

  Status put(std::string_view key, std::string_view value) override {
    pmix_value_t v;
    PMIX_VALUE_CONSTRUCT(&v);
    v.type = PMIX_BYTE_OBJECT;
    // PMIx_Put copies the value; it does not keep or free our bytes.
    std::string copy(value);
    v.data.bo.bytes = copy.data();
    v.data.bo.size = copy.size();
    const std::string k(key);
    const pmix_status_t rc = PMIx_Put(PMIX_GLOBAL, k.c_str(), &v);
    v.data.bo.bytes = nullptr;
    v.data.bo.size = 0;
    if (rc != PMIX_SUCCESS) return pmixError("PMIx_Put " + k, rc);
    return Status::ok();
  }

  Status exchange(std::int64_t timeoutNs) override {
    pmix_status_t rc = PMIx_Commit();
    if (rc != PMIX_SUCCESS) return pmixError("PMIx_Commit", rc);
    pmix_info_t info[2];
    bool collect = true;
    int seconds = static_cast<int>((timeoutNs + 999'999'999) / 1'000'000'000);
    if (seconds < 1) seconds = 1;
    PMIX_INFO_LOAD(&info[0], PMIX_COLLECT_DATA, &collect, PMIX_BOOL);
    PMIX_INFO_LOAD(&info[1], PMIX_TIMEOUT, &seconds, PMIX_INT);
    // Non-blocking, with a deadline of our own: not every server honours PMIX_TIMEOUT (Slurm's
    // plugin keeps a fence for its own PMIxTimeout, 300 s by default), and a rank whose task
    // failed before it reached the fence would hold every other there.
    auto outcome = std::make_shared<FenceOutcome>();
    auto* cbdata = new std::shared_ptr<FenceOutcome>(outcome);
    rc = PMIx_Fence_nb(&wildcard_, 1, info, 2, &FenceOutcome::complete, cbdata);
    PMIX_INFO_DESTRUCT(&info[0]);
    PMIX_INFO_DESTRUCT(&info[1]);
    if (rc != PMIX_SUCCESS) {
      delete cbdata;
      return pmixError("PMIx_Fence_nb", rc);
    }
    std::unique_lock lk(outcome->mu);
    if (!outcome->cv.wait_for(lk, std::chrono::nanoseconds(timeoutNs), [&] { return outcome->done; })) {
      return Status(StatusCode::Timeout,
                    "the PMIx fence did not complete within " + std::to_string(seconds) +
                        " s: a rank of the job never reached it (its task failed or was never "
                        "started; `srun --kill-on-bad-exit` ends such a step at once)");
    }
    if (outcome->status != PMIX_SUCCESS) return pmixError("PMIx_Fence", outcome->status);
    return Status::ok();
  }

  Result<std::string> get(std::uint32_t rank, std::string_view key) override {
    pmix_proc_t peer;
    PMIX_PROC_CONSTRUCT(&peer);
    PMIX_LOAD_PROCID(&peer, me_.nspace, rank);
    // After a collecting fence every value is here: never ask the server again.
    pmix_info_t info;
    bool optional = true;
    PMIX_INFO_LOAD(&info, PMIX_OPTIONAL, &optional, PMIX_BOOL);
    const std::string k(key);
    pmix_value_t* v = nullptr;
    const pmix_status_t rc = PMIx_Get(&peer, k.c_str(), &info, 1, &v);
    PMIX_INFO_DESTRUCT(&info);
    if (rc == PMIX_ERR_NOT_FOUND) {
      return Status(StatusCode::NotFound, "rank " + std::to_string(rank) + " published no " + k);
    }
    if (rc != PMIX_SUCCESS || v == nullptr) return pmixError("PMIx_Get " + k, rc);
    std::string out;
    if (v->type == PMIX_BYTE_OBJECT) {
      out.assign(v->data.bo.bytes, v->data.bo.size);
    } else if (v->type == PMIX_STRING && v->data.string != nullptr) {
      out = v->data.string;
    } else {
      PMIX_VALUE_RELEASE(v);
      return Status(StatusCode::Corrupt, "rank " + std::to_string(rank) + "'s " + k +
                                             " is not a byte string");
    }
    PMIX_VALUE_RELEASE(v);
    return out;
  }

  void abort(int code, std::string_view message) override {
    const std::string m(message);
    (void)PMIx_Abort(code, m.c_str(), nullptr, 0);
  }

 private:
  Status getUint(const pmix_proc_t& proc, const char* key, std::uint32_t& out, bool required) {
    pmix_value_t* v = nullptr;
    const pmix_status_t rc = PMIx_Get(&proc, key, nullptr, 0, &v);
    if (rc != PMIX_SUCCESS || v == nullptr) {
      if (!required) return Status::ok();
      return pmixError(std::string("PMIx_Get ") + key, rc);
    }
    const bool ok = toUint(*v, out);
    PMIX_VALUE_RELEASE(v);
    if (!ok && required) {
      return Status(StatusCode::Corrupt, std::string("PMIx gave ") + key + " a non-integer type");
    }
    return Status::ok();
  }

  pmix_proc_t me_{};
  pmix_proc_t wildcard_{};
  bool initialized_ = false;
  JobFacts facts_;
};

std::unique_ptr<Bootstrap> create(Status& error) {
  auto b = std::make_unique<PmixBootstrap>();
  error = b->init();
  if (!error.isOk()) return nullptr;
  return b;
}

const BootstrapModule kModule{kAbiVersion, "pmix", &create};

}  // namespace
}  // namespace dragon::bootstrap

extern "C" __attribute__((visibility("default"))) const dragon::bootstrap::BootstrapModule*
dragon_bootstrap_module_v1() {  // NOLINT(readability-identifier-naming): the ABI symbol
  return &dragon::bootstrap::kModule;
}
