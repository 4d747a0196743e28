/* SPDX-License-Identifier: MIT
 * The least a PMIx job does at start: init, publish one value, fence with data collection,
 * read a peer's value, finalize. bench/cluster.sh times `srun --mpi=pmix -N3` of it as the
 * baseline of Dragon's bring-up. */
#include <pmix.h>
#include <stdio.h>

int main(void) {
  pmix_proc_t me, wild, peer;
  pmix_value_t v, *got = NULL;
  pmix_info_t info;
  bool collect = true;
  char addr[64];
  if (PMIx_Init(&me, NULL, 0) != PMIX_SUCCESS) return 1;
  PMIX_LOAD_PROCID(&wild, me.nspace, PMIX_RANK_WILDCARD);
  if (PMIx_Get(&wild, PMIX_JOB_SIZE, NULL, 0, &got) != PMIX_SUCCESS) return 1;
  const uint32_t size = got->data.uint32;
  PMIX_VALUE_RELEASE(got);
  snprintf(addr, sizeof addr, "address-of-%u", me.rank);
  PMIX_VALUE_CONSTRUCT(&v);
  v.type = PMIX_STRING;
  v.data.string = addr;
  if (PMIx_Put(PMIX_GLOBAL, "minimal.addr", &v) != PMIX_SUCCESS) return 1;
  if (PMIx_Commit() != PMIX_SUCCESS) return 1;
  PMIX_INFO_LOAD(&info, PMIX_COLLECT_DATA, &collect, PMIX_BOOL);
  if (PMIx_Fence(&wild, 1, &info, 1) != PMIX_SUCCESS) return 1;
  PMIX_LOAD_PROCID(&peer, me.nspace, (me.rank + 1) % size);
  if (PMIx_Get(&peer, "minimal.addr", NULL, 0, &got) != PMIX_SUCCESS) return 1;
  PMIX_VALUE_RELEASE(got);
  return PMIx_Finalize(NULL, 0) == PMIX_SUCCESS ? 0 : 1;
}
