//! Guests' stderr: captured per MEU ([`StderrCapture`], the first bytes kept and the rest
//! counted, never an error for the guest) and kept per function in a ring of its last lines
//! ([`GuestLogs`]), which `GET /v1/functions/{name}/logs` and `tern logs` read.
//!
//! A function's ring holds at most `ring_bytes` (each line counted as its text plus
//! [`LINE_OVERHEAD_BYTES`], so lines are capped too); a guest that floods stderr pushes out
//! only its own function's older lines. A tenant's rings together hold at most `tenant_bytes`:
//! past it, the tenant's largest ring gives up its oldest lines, so a tenant with many
//! logging functions shares its bytes between them and never takes another tenant's. Memory is
//! bounded by the number of functions that have logged × `ring_bytes` and by the number of
//! tenants × `tenant_bytes`, and a removed function's ring goes with it.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tern_sync::poison::lock;
use tern_tenancy::TenantName;
use tern_wire::{FunctionName, LogLine, LogPage};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// The longest line kept; longer ones are cut (and say so).
pub const MAX_LINE_BYTES: usize = 1024;

/// What a line costs its ring besides its text (its number, time and request id): a guest
/// writing empty lines fills its ring too, so lines are capped as well as bytes.
pub const LINE_OVERHEAD_BYTES: usize = 64;

/// Where captured stderr goes: the node's [`GuestLogs`], or (inside a cell) a tap that sends
/// it back to the node with the MEU's answer.
pub trait LogSink: Send + Sync + 'static {
    /// `stderr` of one MEU of `function` (`request_id`), of which `cut` more bytes were not
    /// kept.
    fn record(&self, function: &FunctionName, request_id: &str, stderr: Bytes, cut: u64);
}

#[derive(Default)]
struct Captured {
    buf: BytesMut,
    cut: u64,
}

/// One MEU's stderr: keeps the first `cap` bytes, counts the rest; writes never fail.
#[derive(Clone)]
pub(crate) struct StderrCapture {
    cap: usize,
    state: Arc<Mutex<Captured>>,
}

impl StderrCapture {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap,
            state: Arc::default(),
        }
    }

    fn append(&self, bytes: &[u8]) {
        let mut s = lock(&self.state);
        let room = self.cap.saturating_sub(s.buf.len()).min(bytes.len());
        s.buf.extend_from_slice(&bytes[..room]);
        s.cut = s.cut.saturating_add((bytes.len() - room) as u64);
    }

    /// What was kept, and how many bytes were not.
    pub(crate) fn take(&self) -> (Bytes, u64) {
        let mut s = lock(&self.state);
        let cut = std::mem::take(&mut s.cut);
        (std::mem::take(&mut s.buf).freeze(), cut)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for StderrCapture {
    async fn ready(&mut self) {}
}

impl OutputStream for StderrCapture {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(1 << 20)
    }
}

impl tokio::io::AsyncWrite for StderrCapture {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for StderrCapture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for StderrCapture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// Records an MEU's captured stderr in its sink when dropped: whichever way the MEU ends
/// (answer, trap, timeout, the caller going away), what the guest wrote is kept.
pub(crate) struct RecordOnDrop {
    pub(crate) capture: StderrCapture,
    pub(crate) sink: Arc<dyn LogSink>,
    pub(crate) function: FunctionName,
    pub(crate) request_id: Arc<str>,
}

impl Drop for RecordOnDrop {
    fn drop(&mut self) {
        let (stderr, cut) = self.capture.take();
        if !stderr.is_empty() || cut > 0 {
            self.sink
                .record(&self.function, &self.request_id, stderr, cut);
        }
    }
}

/// A kept line; the request id is shared by the lines of one MEU.
struct Line {
    seq: u64,
    at_ms: u64,
    request_id: Arc<str>,
    text: String,
}

impl Line {
    fn cost(&self) -> usize {
        self.text.len() + LINE_OVERHEAD_BYTES
    }
}

/// One tenant's rings, and the bytes they hold together.
#[derive(Default)]
struct TenantRings {
    bytes: usize,
    rings: HashMap<FunctionName, Ring>,
}

impl TenantRings {
    /// Pushes out the oldest lines of the largest rings until the rings hold at most `cap`
    /// together: the largest gives up lines until it is smaller than the next largest, so
    /// every function keeps an equal share and the quiet ones keep theirs untouched.
    fn shed(&mut self, cap: usize) {
        while self.bytes > cap {
            let mut largest: Option<(&FunctionName, usize)> = None;
            let mut next = 0;
            for (name, ring) in &self.rings {
                match largest {
                    Some((_, most)) if ring.bytes <= most => next = next.max(ring.bytes),
                    _ => {
                        next = next.max(largest.map_or(0, |(_, most)| most));
                        largest = Some((name, ring.bytes));
                    }
                }
            }
            let Some(ring) = largest
                .map(|(name, _)| name.clone())
                .and_then(|name| self.rings.get_mut(&name))
            else {
                return;
            };
            // At least one line goes, so rings of equal size take turns.
            while let Some(freed) = ring.push_out_oldest() {
                self.bytes -= freed;
                if self.bytes <= cap || ring.bytes < next {
                    break;
                }
            }
            if ring.lines.is_empty() && self.bytes > cap {
                // Bytes counted for no line: cannot happen; never loop on it.
                return;
            }
        }
    }
}

#[derive(Default)]
struct Ring {
    lines: VecDeque<Line>,
    bytes: usize,
    next_seq: u64,
    /// Lines pushed out by newer ones (or too many at once to keep).
    dropped: u64,
}

impl Ring {
    /// Pushes out the oldest line, counting it as dropped; the bytes it held.
    fn push_out_oldest(&mut self) -> Option<usize> {
        let old = self.lines.pop_front()?;
        self.bytes -= old.cost();
        self.dropped += 1;
        Some(old.cost())
    }
}

/// Every function's last stderr lines on this node. `clock_ms` gives the time stamped on
/// lines (passed in, so tests choose it). A function has a ring from its install to its
/// removal; what an MEU of a function without one writes (it ended after the removal) is not
/// kept.
pub struct GuestLogs {
    ring_bytes: usize,
    tenant_bytes: usize,
    tenants: Mutex<HashMap<TenantName, TenantRings>>,
    clock_ms: Box<dyn Fn() -> u64 + Send + Sync>,
    forward: std::sync::OnceLock<Forward>,
}

/// Where the lines a ring keeps are also sent (the node's OTLP log export): the function, the
/// MEU's request id, the lines' time and the lines. Must not wait.
pub type Forward = Box<dyn Fn(&FunctionName, &str, u64, &[String]) + Send + Sync>;

impl GuestLogs {
    /// Each function keeps at most `ring_bytes` of lines, and a tenant's functions at most
    /// `tenant_bytes` together.
    pub fn new(
        ring_bytes: usize,
        tenant_bytes: usize,
        clock_ms: Box<dyn Fn() -> u64 + Send + Sync>,
    ) -> Self {
        Self {
            ring_bytes,
            tenant_bytes,
            tenants: Mutex::default(),
            clock_ms,
            forward: std::sync::OnceLock::new(),
        }
    }

    /// Also sends every line a ring keeps to `forward`, from now on; once per node (a second
    /// call changes nothing and says so).
    pub fn forward_to(&self, forward: Forward) -> bool {
        self.forward.set(forward).is_ok()
    }

    /// Bytes kept per function (0: guests' stderr is discarded).
    pub fn ring_bytes(&self) -> usize {
        self.ring_bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TenantName, TenantRings>> {
        lock(&self.tenants)
    }

    /// Gives `function` a ring (kept if it has one: a new version goes on with its lines).
    pub fn open(&self, function: &FunctionName) {
        if self.ring_bytes > 0 {
            self.lock()
                .entry(function.tenant())
                .or_default()
                .rings
                .entry(function.clone())
                .or_default();
        }
    }

    fn has_ring(&self, tenant: &TenantName, function: &FunctionName) -> bool {
        self.lock()
            .get(tenant)
            .is_some_and(|t| t.rings.contains_key(function))
    }

    /// `function`'s lines after `after` (0: all it keeps), at most `limit`. A cursor past
    /// the function's last line (it was removed and deployed again since, or the cursor is
    /// another node's) reads from the start.
    pub fn read(&self, function: &FunctionName, after: u64, limit: usize) -> LogPage {
        let tenants = self.lock();
        let Some(ring) = tenants
            .get(&function.tenant())
            .and_then(|t| t.rings.get(function))
        else {
            return LogPage::default();
        };
        let after = if after > ring.next_seq { 0 } else { after };
        let lines: Vec<LogLine> = ring
            .lines
            .iter()
            .filter(|l| l.seq > after)
            .take(limit)
            .map(|l| LogLine {
                seq: l.seq,
                at_ms: l.at_ms,
                request_id: l.request_id.to_string(),
                text: l.text.clone(),
            })
            .collect();
        LogPage {
            next: lines.last().map_or(ring.next_seq.max(after), |l| l.seq),
            lines,
            dropped: ring.dropped,
        }
    }

    /// Forgets a removed function's lines.
    pub fn remove(&self, function: &FunctionName) {
        let tenant = function.tenant();
        let mut tenants = self.lock();
        let Some(rings) = tenants.get_mut(&tenant) else {
            return;
        };
        if let Some(ring) = rings.rings.remove(function) {
            rings.bytes -= ring.bytes;
        }
        if rings.rings.is_empty() {
            tenants.remove(&tenant);
        }
    }

    /// Functions with lines kept, and the bytes their rings hold together.
    pub fn usage(&self) -> (usize, usize) {
        let tenants = self.lock();
        let rings = || tenants.values().flat_map(|t| t.rings.values());
        let holding = rings().filter(|r| !r.lines.is_empty()).count();
        (holding, tenants.values().map(|t| t.bytes).sum())
    }

    /// The bytes `tenant`'s rings hold together.
    pub fn tenant_usage(&self, tenant: &TenantName) -> usize {
        self.lock().get(tenant).map_or(0, |t| t.bytes)
    }
}

/// `stderr` as lines (long ones cut), with a last line counting what was not kept.
fn split_lines(stderr: &[u8], cut: u64) -> Vec<String> {
    let text = String::from_utf8_lossy(stderr);
    let mut lines: Vec<String> = text
        .lines()
        .map(|l| {
            if l.len() <= MAX_LINE_BYTES {
                return l.to_owned();
            }
            let mut end = MAX_LINE_BYTES;
            while !l.is_char_boundary(end) {
                end -= 1;
            }
            format!("{} [line cut at {MAX_LINE_BYTES} bytes]", &l[..end])
        })
        .collect();
    if cut > 0 {
        lines.push(format!("[{cut} more bytes of stderr not kept]"));
    }
    lines
}

impl LogSink for GuestLogs {
    fn record(&self, function: &FunctionName, request_id: &str, stderr: Bytes, cut: u64) {
        if self.ring_bytes == 0 {
            return;
        }
        // Everything but the ring's own bookkeeping before the lock: only the lines that can
        // fit are kept (the newest), the rest counted as dropped.
        let mut lines = split_lines(&stderr, cut);
        let mut room = self.ring_bytes;
        let keep_from = lines
            .iter()
            .rposition(|l| match room.checked_sub(l.len() + LINE_OVERHEAD_BYTES) {
                Some(left) => {
                    room = left;
                    false
                }
                None => true,
            })
            .map_or(0, |i| i + 1);
        let never_kept = keep_from as u64;
        lines.drain(..keep_from);
        let at_ms = (self.clock_ms)();
        let request_id: Arc<str> = Arc::from(request_id);
        let tenant = function.tenant();
        if let Some(forward) = self.forward.get() {
            // Outside the lock every function's stderr shares: making records costs time.
            if !self.has_ring(&tenant, function) {
                return;
            }
            forward(function, &request_id, at_ms, &lines);
        }
        let mut tenants = self.lock();
        let Some(owner) = tenants.get_mut(&tenant) else {
            return;
        };
        let Some(ring) = owner.rings.get_mut(function) else {
            return;
        };
        let before = ring.bytes;
        ring.next_seq += never_kept;
        ring.dropped += never_kept;
        for text in lines {
            ring.next_seq += 1;
            let line = Line {
                seq: ring.next_seq,
                at_ms,
                request_id: request_id.clone(),
                text,
            };
            ring.bytes += line.cost();
            ring.lines.push_back(line);
            while ring.bytes > self.ring_bytes && ring.push_out_oldest().is_some() {}
        }
        owner.bytes = owner.bytes - before + ring.bytes;
        owner.shed(self.tenant_bytes);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Logs with rings for f, quiet, loud and e.
    fn logs(ring_bytes: usize) -> GuestLogs {
        let l = GuestLogs::new(ring_bytes, usize::MAX, Box::new(|| 42));
        for f in ["f", "quiet", "loud", "e"] {
            l.open(&name(f));
        }
        l
    }

    fn name(s: &str) -> FunctionName {
        s.parse().unwrap()
    }

    #[test]
    fn lines_are_numbered_read_from_a_cursor_and_stamped() {
        let l = logs(1024);
        l.record(&name("f"), "r1", Bytes::from("one\ntwo\n"), 0);
        l.record(&name("f"), "r2", Bytes::from("three"), 0);
        let all = l.read(&name("f"), 0, 100);
        let texts: Vec<_> = all.lines.iter().map(|x| x.text.as_str()).collect();
        assert_eq!(texts, ["one", "two", "three"]);
        assert_eq!(all.next, 3);
        assert_eq!(all.lines[2].request_id, "r2");
        assert_eq!(all.lines[0].at_ms, 42);
        let newer = l.read(&name("f"), 2, 100);
        assert_eq!(newer.lines.len(), 1);
        assert_eq!(l.read(&name("f"), 3, 100).lines, vec![]);
        assert_eq!(l.read(&name("f"), 3, 100).next, 3);
        assert_eq!(l.read(&name("other"), 0, 100), LogPage::default());
        assert_eq!(l.read(&name("f"), 0, 100).lines.len(), 3);
    }

    #[test]
    fn kept_lines_are_also_forwarded_with_their_function_request_and_time_once_set() {
        type Seen = Vec<(String, String, u64, Vec<String>)>;
        let l = logs(1024);
        l.record(&name("f"), "before", Bytes::from("not forwarded"), 0);
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let sink = seen.clone();
        assert!(l.forward_to(Box::new(move |f, r, at, lines| {
            lock(&sink).push((f.to_string(), r.to_owned(), at, lines.to_vec()));
        })));
        assert!(!l.forward_to(Box::new(|_, _, _, _| {})), "set once");
        l.record(&name("f"), "r1", Bytes::from("one\ntwo\n"), 0);
        // A function without a ring (removed) keeps nothing and forwards nothing.
        l.record(&name("gone"), "r2", Bytes::from("lost"), 0);
        assert_eq!(
            *lock(&seen),
            vec![(
                "f".to_owned(),
                "r1".to_owned(),
                42,
                vec!["one".to_owned(), "two".to_owned()]
            )]
        );
    }

    #[test]
    fn a_flooding_function_pushes_out_only_its_own_lines() {
        let l = logs(100);
        l.record(&name("quiet"), "q", Bytes::from("kept"), 0);
        for i in 0..100 {
            l.record(&name("loud"), "l", Bytes::from(format!("line {i:04}\n")), 0);
        }
        let loud = l.read(&name("loud"), 0, 1000);
        let held: usize = loud
            .lines
            .iter()
            .map(|x| x.text.len() + LINE_OVERHEAD_BYTES)
            .sum();
        assert!(held <= 100, "{held}");
        assert_eq!(loud.lines.len(), 1);
        assert_eq!(loud.lines.last().unwrap().text, "line 0099");
        assert_eq!(loud.dropped, 100 - loud.lines.len() as u64);
        assert_eq!(l.read(&name("quiet"), 0, 10).lines[0].text, "kept");
        l.remove(&name("loud"));
        assert_eq!(l.usage(), (1, 4 + LINE_OVERHEAD_BYTES));
        // Empty lines cost their overhead: a ring of them stays bounded.
        let empty = logs(640);
        empty.record(&name("e"), "r", Bytes::from("\n".repeat(100_000)), 0);
        assert_eq!(empty.read(&name("e"), 0, usize::MAX).lines.len(), 10);
    }

    #[test]
    fn a_tenants_functions_share_its_bytes_and_never_push_out_another_tenants_lines() {
        // Rings of 1,000 bytes; one tenant's rings hold 1,500 together.
        let l = GuestLogs::new(1000, 1500, Box::new(|| 42));
        for f in ["acme.quiet", "acme.loud", "acme.other", "zeta.f"] {
            l.open(&name(f));
        }
        let (acme, zeta): (TenantName, TenantName) =
            ("acme".parse().unwrap(), "zeta".parse().unwrap());
        let texts = |f: &str| -> Vec<String> {
            let page = l.read(&name(f), 0, usize::MAX);
            page.lines.into_iter().map(|x| x.text).collect()
        };
        let held =
            |f: &str| -> usize { texts(f).iter().map(|t| t.len() + LINE_OVERHEAD_BYTES).sum() };
        l.record(&name("acme.quiet"), "q", Bytes::from("kept"), 0);
        l.record(&name("zeta.f"), "z", Bytes::from("kept"), 0);
        let flood = |f: &str| {
            for i in 0..200 {
                l.record(&name(f), "r", Bytes::from(format!("line {i:04}\n")), 0);
            }
        };
        // One loud function fills its own ring, within the tenant's bytes.
        flood("acme.loud");
        assert_eq!(held("acme.loud"), 13 * (9 + LINE_OVERHEAD_BYTES));
        assert_eq!(
            l.tenant_usage(&acme),
            held("acme.loud") + held("acme.quiet")
        );
        // A second one: the two largest rings share what the quiet one leaves.
        flood("acme.other");
        let (loud, other) = (held("acme.loud"), held("acme.other"));
        assert!(l.tenant_usage(&acme) <= 1500, "{}", l.tenant_usage(&acme));
        assert_eq!(l.tenant_usage(&acme), loud + other + held("acme.quiet"));
        assert!(
            loud.abs_diff(other) <= 9 + LINE_OVERHEAD_BYTES,
            "{loud} {other}"
        );
        assert!(loud >= 8 * (9 + LINE_OVERHEAD_BYTES), "{loud}");
        assert_eq!(texts("acme.other").last().unwrap(), "line 0199");
        assert_eq!(texts("acme.loud").last().unwrap(), "line 0199");
        let pushed_out = l.read(&name("acme.loud"), 0, 1).dropped;
        assert_eq!(pushed_out, 200 - texts("acme.loud").len() as u64);
        // The quiet function and the other tenant keep their lines.
        assert_eq!(texts("acme.quiet"), ["kept"]);
        assert_eq!(texts("zeta.f"), ["kept"]);
        assert_eq!(l.tenant_usage(&zeta), 4 + LINE_OVERHEAD_BYTES);
        assert_eq!(l.usage().1, l.tenant_usage(&acme) + l.tenant_usage(&zeta));
        // A removed function's bytes leave its tenant's count.
        l.remove(&name("acme.loud"));
        assert_eq!(l.tenant_usage(&acme), other + held("acme.quiet"));
        l.remove(&name("zeta.f"));
        assert_eq!(l.tenant_usage(&zeta), 0);
    }

    #[test]
    fn long_lines_and_cut_bytes_are_marked_and_nothing_is_kept_with_a_zero_ring() {
        let l = logs(10_000);
        let long = "é".repeat(MAX_LINE_BYTES);
        l.record(&name("f"), "r", Bytes::from(long), 7);
        let page = l.read(&name("f"), 0, 10);
        assert!(page.lines[0].text.ends_with("[line cut at 1024 bytes]"));
        assert!(page.lines[0].text.len() <= MAX_LINE_BYTES + 30);
        assert_eq!(page.lines[1].text, "[7 more bytes of stderr not kept]");
        let off = logs(0);
        off.record(&name("f"), "r", Bytes::from("x"), 0);
        assert_eq!(off.usage(), (0, 0));
    }

    #[test]
    fn a_function_without_a_ring_keeps_nothing_and_a_stale_cursor_reads_from_the_start() {
        let l = logs(1024);
        // Removed while its MEU ran: what the MEU wrote afterwards is not kept.
        l.remove(&name("f"));
        l.record(&name("f"), "r", Bytes::from("late"), 0);
        assert_eq!(l.read(&name("f"), 0, 10), LogPage::default());
        // Deployed again: a new ring; a cursor from before reads it from the start.
        l.open(&name("f"));
        l.record(&name("f"), "r", Bytes::from("one\ntwo"), 0);
        let page = l.read(&name("f"), 50, 10);
        assert_eq!(page.lines.len(), 2);
        assert_eq!(page.next, 2);
        // Opening again (a new version) keeps the lines.
        l.open(&name("f"));
        assert_eq!(l.read(&name("f"), 0, 10).lines.len(), 2);
    }

    #[test]
    fn a_capture_keeps_its_first_bytes_and_counts_the_rest() {
        let c = StderrCapture::new(4);
        c.append(b"abc");
        c.append(b"def");
        assert_eq!(c.take(), (Bytes::from("abcd"), 2));
        assert_eq!(c.take(), (Bytes::new(), 0));
    }
}
