//! Panics of third-party decoders, contained. The Arrow IPC and parquet readers
//! assert on some malformed input instead of returning an error (a buffer slice past
//! its end, a negative column offset in a damaged footer): for a user's data file that
//! is bad input, to be said as such, not a crash, nor a panic message on stderr
//! followed by "internal error".

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

thread_local! {
    /// Whether this thread is inside [`contain`]: the hook then stays quiet.
    static CONTAINED: Cell<bool> = const { Cell::new(false) };
}

static QUIET_HOOK: Once = Once::new();

/// Runs `f`; a panic in it comes back as its message, unprinted. Panics elsewhere (on
/// other threads, or after `f`) go to the hook that was there before.
pub fn contain<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    QUIET_HOOK.call_once(|| {
        let earlier = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !CONTAINED.with(Cell::get) {
                earlier(info);
            }
        }));
    });
    let outer = CONTAINED.with(|c| c.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    CONTAINED.with(|c| c.set(outer));
    result.map_err(|p| panic_message(p.as_ref()))
}

/// The text a panic was raised with (empty for a payload that is not text).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_inside_comes_back_as_its_message_and_the_flag_is_restored() {
        assert_eq!(contain(|| 7), Ok(7));
        let v: Vec<u8> = vec![];
        let index = 3;
        let e = contain(|| v[index]).unwrap_err();
        assert!(e.contains("index out of bounds"), "{e}");
        assert_eq!(
            contain(|| contain(|| panic!("inner"))),
            Ok(Err("inner".to_string()))
        );
        assert!(!CONTAINED.with(Cell::get));
    }
}
