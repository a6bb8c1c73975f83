//! Taking locks without panicking on poison.
//!
//! A panic inside a request is caught at the worker boundary and answered as
//! an error; the locks it held are then "poisoned". Every critical section in
//! zeoraid is short and leaves its data consistent, so the right response is
//! to go on with the data, not to panic every later caller. These
//! functions are the one place that rule is written.

use std::sync::{
    Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError,
};

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

pub fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

/// The read side if it is free now (no writer holds or waits for it);
/// `None` instead of waiting (for the event loop, which must not block).
pub fn try_read<T>(l: &RwLock<T>) -> Option<RwLockReadGuard<'_, T>> {
    match l.try_read() {
        Ok(g) => Some(g),
        Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn poisoned_locks_still_yield_their_data() {
        let m = Arc::new(Mutex::new(1));
        let l = Arc::new(RwLock::new(2));
        let (m2, l2) = (m.clone(), l.clone());
        let _ = std::thread::spawn(move || {
            let _g = m2.lock();
            let _w = l2.write();
            panic!("poison both");
        })
        .join();
        assert!(m.is_poisoned() && l.is_poisoned());
        *lock(&m) += 1;
        *write(&l) += 1;
        assert_eq!((*lock(&m), *read(&l)), (2, 3));
        assert_eq!(try_read(&l).map(|g| *g), Some(3));
    }

    #[test]
    fn try_read_does_not_wait_for_a_writer() {
        let l = RwLock::new(1);
        let w = write(&l);
        assert!(try_read(&l).is_none());
        drop(w);
        assert_eq!(try_read(&l).map(|g| *g), Some(1));
    }
}
