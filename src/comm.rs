//! The MPI layer: the only file that talks to MPI. `Comm::solo()` is a one-rank stand-in with the
//! same methods, so the serial baseline runs without `mpirun` and without initialising MPI.

use anyhow::Result;
use mpi::collective::SystemOperation;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;

enum Inner {
    Solo,
    Mpi {
        // Dropping the universe finalises MPI, so it lives as long as the communicator.
        _universe: mpi::environment::Universe,
        world: SimpleCommunicator,
    },
}

pub struct Comm {
    inner: Inner,
    rank: usize,
    size: usize,
}

impl Comm {
    pub fn solo() -> Comm {
        Comm {
            inner: Inner::Solo,
            rank: 0,
            size: 1,
        }
    }

    /// Initialises MPI (a binary started without mpirun becomes a one-rank MPI job).
    pub fn init_mpi() -> Result<Comm> {
        let universe = mpi::initialize().ok_or_else(|| anyhow::anyhow!("MPI was already initialised"))?;
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        Ok(Comm {
            inner: Inner::Mpi {
                _universe: universe,
                world,
            },
            rank,
            size,
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }
    pub fn size(&self) -> usize {
        self.size
    }
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// Element-wise sum over all ranks of `send` into `recv` (same length).
    pub fn all_reduce_sum_f32(&self, send: &[f32], recv: &mut [f32]) {
        match &self.inner {
            Inner::Solo => recv.copy_from_slice(send),
            Inner::Mpi { world, .. } => world.all_reduce_into(send, recv, SystemOperation::sum()),
        }
    }

    pub fn all_reduce_sum_f64(&self, values: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; values.len()];
        match &self.inner {
            Inner::Solo => out.copy_from_slice(values),
            Inner::Mpi { world, .. } => world.all_reduce_into(values, &mut out[..], SystemOperation::sum()),
        }
        out
    }

    /// Overwrites `buf` on every rank with rank `root`'s contents.
    pub fn broadcast_f32(&self, buf: &mut [f32], root: usize) {
        if let Inner::Mpi { world, .. } = &self.inner {
            world.process_at_rank(root as i32).broadcast_into(buf);
        }
    }

    /// Every rank's `value`, indexed by rank.
    pub fn all_gather_u64(&self, value: u64) -> Vec<u64> {
        let mut out = vec![0u64; self.size];
        match &self.inner {
            Inner::Solo => out[0] = value,
            Inner::Mpi { world, .. } => world.all_gather_into(&value, &mut out[..]),
        }
        out
    }

    pub fn all_gather_f64(&self, value: f64) -> Vec<f64> {
        let mut out = vec![0f64; self.size];
        match &self.inner {
            Inner::Solo => out[0] = value,
            Inner::Mpi { world, .. } => world.all_gather_into(&value, &mut out[..]),
        }
        out
    }

    pub fn barrier(&self) {
        if let Inner::Mpi { world, .. } = &self.inner {
            world.barrier();
        }
    }

    /// Ends every rank of the job (MPI_Abort) with `code`; in a solo run, exits the process.
    pub fn abort(&self, code: i32) -> ! {
        match &self.inner {
            Inner::Solo => std::process::exit(code),
            Inner::Mpi { world, .. } => world.abort(code),
        }
    }
}
