/* Is the PMIx fence of an srun step global? Rank 1 sleeps 3 s before PMIx_Fence; every rank prints
 * how long its fence took. A global fence holds rank 0 for about 3 s; a node-local one (Slurm
 * 22.05's tree fence when TreeWidth exceeds the step's node count) lets it go at once.
 *   SLURM_PMIX_FENCE=tree srun --mpi=pmix -N 2 -n 2 ./pmix_fence   # rank 0: 0.00 s
 *   SLURM_PMIX_FENCE=ring srun --mpi=pmix -N 2 -n 2 ./pmix_fence   # rank 0: 3.00 s
 * Built by scripts/repro/start_up_crash.sh; docs/testing.md#the-start-up-crash. */
#include <pmix.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(void) {
    pmix_proc_t me;
    char host[64];
    if (PMIx_Init(&me, NULL, 0) != PMIX_SUCCESS) {
        fprintf(stderr, "PMIx_Init failed: not started by srun --mpi=pmix?\n");
        return 1;
    }
    if (me.rank == 1) sleep(3);
    double start = seconds();
    pmix_status_t rc = PMIx_Fence(NULL, 0, NULL, 0); /* every rank of the job, as MPI_Init's */
    gethostname(host, sizeof host);
    printf("rank %u on %s: fence %.2f s (rc %d)\n", me.rank, host, seconds() - start, rc);
    PMIx_Finalize(NULL, 0);
    return rc == PMIX_SUCCESS ? 0 : 1;
}
