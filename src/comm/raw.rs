//! Raw MPI helpers every part of comm uses: the return-code check, the abort, and the
//! allocation of node-shared windows.

use mpi::ffi;
use mpi::topology::{Communicator, SimpleCommunicator};

/// Panics (and so, through the panic hook, aborts the job) when a raw MPI call fails. With MPI's
/// default error handler a failing call already aborts; this also covers handlers that return.
pub(crate) fn mpi_ok(code: std::ffi::c_int, call: &str) {
    if code != ffi::MPI_SUCCESS as std::ffi::c_int {
        panic!("{call} failed with MPI error code {code}");
    }
}

/// MPI_Abort on the world communicator; safe from any thread (MPI_THREAD_MULTIPLE).
pub fn abort_world(code: i32) {
    // SAFETY: plain FFI call on the predefined world communicator; it does not return.
    unsafe {
        ffi::MPI_Abort(ffi::RSMPI_COMM_WORLD, code);
    }
}

/// `MPI_Win_allocate_shared` of `len` zeroed values of `T` (plain data: f32, u64) on each rank of
/// `comm`, whose ranks must all share one node (collective), and every rank's part as
/// `MPI_Win_shared_query` gives its address. `what` names the window in errors.
pub(super) fn allocate_shared<T: Copy>(
    comm: &SimpleCommunicator,
    len: usize,
    what: &str,
) -> (ffi::MPI_Win, Vec<*mut T>) {
    let raw = mpi::raw::AsRaw::as_raw(comm);
    let unit = std::mem::size_of::<T>();
    // SAFETY: reading a predefined handle.
    let mut win: ffi::MPI_Win = unsafe { ffi::RSMPI_WIN_NULL };
    let mut base: *mut T = std::ptr::null_mut();
    // SAFETY: MPI-3 calls on a valid communicator; `base` and `win` are out-parameters of the
    // sizes MPI writes (a pointer and a window handle); `base` then holds `len` T of ours.
    unsafe {
        mpi_ok(
            ffi::MPI_Win_allocate_shared(
                (len * unit) as ffi::MPI_Aint,
                unit as std::ffi::c_int,
                ffi::RSMPI_INFO_NULL,
                raw,
                &mut base as *mut *mut T as *mut std::ffi::c_void,
                &mut win,
            ),
            &format!("MPI_Win_allocate_shared ({what})"),
        );
        // MPI does not promise zeroed memory, and gradients accumulate into it: on a one-rank
        // node Open MPI's window is heap memory, and its garbage made the first step's
        // gradients (and so the weights) NaN. Each rank zeroes its own part (all-zero bytes are
        // a valid T for the plain-data types used here).
        std::ptr::write_bytes(base, 0, len);
    }
    let bases = (0..comm.size())
        .map(|r| {
            let (mut size, mut unit, mut ptr) = (0 as ffi::MPI_Aint, 0i32, std::ptr::null_mut::<T>());
            // SAFETY: query of a rank of this window's group; all three are out-parameters.
            unsafe {
                mpi_ok(
                    ffi::MPI_Win_shared_query(
                        win,
                        r,
                        &mut size,
                        &mut unit,
                        &mut ptr as *mut *mut T as *mut std::ffi::c_void,
                    ),
                    &format!("MPI_Win_shared_query ({what})"),
                )
            };
            ptr
        })
        .collect();
    (win, bases)
}
