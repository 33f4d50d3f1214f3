/* MPI_Init_thread, a barrier and an all-reduce: what partrain's start-up asks of MPI, nothing else.
 * Two 2-node jobs of it started together on two emulated clusters, again and again, crashed a rank
 * in MPI_Init_thread 5 times in 600 jobs with the tree fence (scripts/repro/start_up_crash.sh). */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    int level = argc > 1 ? atoi(argv[1]) : MPI_THREAD_MULTIPLE, got, rank, x = 1, sum = 0;
    MPI_Init_thread(&argc, &argv, level, &got);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Barrier(MPI_COMM_WORLD);
    MPI_Allreduce(&x, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0) printf("ranks %d, thread level %d\n", sum, got);
    MPI_Finalize();
    return 0;
}
