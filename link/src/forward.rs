//! Forwarding one MEU to a peer: the request it becomes, and what the peer's answer (or the
//! transport's failure) means for failover. Pure: the shell does the exchange and hands the
//! result here, so every classification is tested without a network.
//!
//! The classification:
//! - the transport failed (link broken, peer gone mid-answer) or the answer is not a valid
//!   peer response: **lost** — the MEU may have run; it is re-placed (at-least-once);
//! - the peer answered an error whose code is retryable ([`ErrorCode::is_retryable`]: full,
//!   not ready for this version, stopping…): **refused** — it did not run; try another node;
//! - any other error (trap, timeout, bad input): **failed** — that is the caller's answer;
//! - an `Executed` answer is the outcome.
//!
//! An MEU whose caller takes its answer as it is written is forwarded on a stream whose answer
//! comes in parts; [`Relay`] passes them on, and once one has gone on a failure can only end
//! the caller's answer, not re-place the MEU.
//!
//! [`ErrorCode::is_retryable`]: tern_wire::ErrorCode::is_retryable

use std::time::Duration;

use bytes::Bytes;
use tern_actors::remote::RemoteFailure;
use tern_actors::{Error as RuntimeError, Outcome};
use tern_runtime::{AnswerSender, AnswerStream, Meu, StreamTo};
use tern_wire::peer::{PeerResponse, RemoteMeu};
use tern_wire::{AnswerPart, FunctionInfo};

use crate::LinkError;

/// The request that runs `meu` (of version `info`) on a peer; `attempt` counts reruns.
pub fn remote_meu(meu: &Meu, info: &FunctionInfo, attempt: u32) -> RemoteMeu {
    // By tokio's clock, as the unit's acceptance (the paused one in tests that pause it).
    let waited = tokio::time::Instant::from_std(meu.accepted_at)
        .elapsed()
        .as_micros();
    RemoteMeu {
        request_id: meu.request_id.to_string(),
        function: meu.function.clone(),
        hash: info.hash,
        input: meu.input.to_vec(),
        items: meu.items.min(u32::MAX as usize) as u32,
        attempt,
        waited_us: waited.min(u128::from(u64::MAX)) as u64,
        trace: tern_telemetry::traceparent(&meu.trace),
    }
}

/// What `node`'s answer to a forwarded MEU means: `answer` is the raw answer frame, or how
/// the exchange failed; frames larger than `frame_limit` are not decoded. An outcome comes
/// with the peer's own time on the MEU, as it reports it.
pub fn classify(
    node: &str,
    answer: Result<Vec<u8>, LinkError>,
    frame_limit: usize,
) -> Result<(Outcome, Duration), RemoteFailure> {
    let lost = |detail: String| {
        RemoteFailure::Lost(RuntimeError::PeerLost {
            node: node.to_owned(),
            detail,
        })
    };
    let answer = match answer {
        Ok(bytes) => bytes,
        Err(LinkError::NotConnected(_)) => {
            return Err(RemoteFailure::Refused(RuntimeError::PeerNotConnected(
                node.to_owned(),
            )));
        }
        Err(e) => return Err(lost(e.to_string())),
    };
    match tern_wire::decode::<PeerResponse>(&answer, frame_limit) {
        Ok(PeerResponse::Executed(o)) => Ok((
            Outcome {
                output: Bytes::from(o.output),
                cold_start: o.cold_start,
                meus: 1,
                timings: o.timings,
                node: o.node.into(),
            },
            Duration::from_micros(o.peer_us),
        )),
        Ok(PeerResponse::Error(error)) => {
            let retry_elsewhere = error.code.is_retryable();
            let e = RuntimeError::Remote {
                node: node.to_owned(),
                error,
            };
            Err(if retry_elsewhere {
                RemoteFailure::Refused(e)
            } else {
                RemoteFailure::Failed(e)
            })
        }
        Ok(other) => Err(lost(format!("unexpected answer {other:?}"))),
        Err(e) => Err(lost(format!("bad answer: {e}"))),
    }
}

/// Passes a peer's streamed answer on to the caller as it arrives: decodes each part frame,
/// checks it ([`StreamTo`]: head first, once, nothing after the end, within the budget) and
/// sends it on. Once one part has gone on, the caller has the head: the run can no longer be
/// run again elsewhere, so a lost or refused run becomes the caller's answer (the body is cut
/// short) — [`Relay::settle`].
pub struct Relay {
    to: StreamTo,
    /// The peer running the MEU, named in the head passed on.
    node: String,
    frame_limit: usize,
    /// A part went on to the caller.
    forwarded: bool,
    /// How the peer broke the protocol, if it did; nothing more is passed on then.
    broken: Option<String>,
}

impl Relay {
    /// Parts of `node`'s answer go to `caller`, at most `budget` of them by
    /// [`tern_runtime::part_size`].
    pub fn new(node: &str, caller: AnswerSender, budget: usize, frame_limit: usize) -> Self {
        Self {
            to: StreamTo::new(caller, budget),
            node: node.to_owned(),
            frame_limit,
            forwarded: false,
            broken: None,
        }
    }

    /// Passes on one part frame from the peer.
    pub fn pass(&mut self, frame: &[u8]) {
        if self.broken.is_some() {
            return;
        }
        let taken = tern_wire::decode::<AnswerPart>(frame, self.frame_limit)
            .map_err(|e| format!("a part did not decode: {e}"))
            .and_then(|mut part| {
                // Who ran it is the link's to say, not the peer's.
                if let AnswerPart::Head { node, .. } = &mut part {
                    *node = Some(self.node.clone());
                }
                self.to.take(part).map_err(|why| format!("parts {why}"))
            });
        match taken {
            Ok(()) => self.forwarded = true,
            Err(why) => self.broken = Some(why),
        }
    }

    /// Whether the peer broke the protocol: nothing more is worth waiting for.
    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    /// What the forwarded run's `result` means for the caller, given the parts passed on. A
    /// failure before any part went on gives the caller's end back to `stream`, so the run
    /// placed next can still stream.
    pub fn settle<T>(
        self,
        node: &str,
        result: Result<T, RemoteFailure>,
        stream: &AnswerStream,
    ) -> Result<T, RemoteFailure> {
        let result = match self.broken {
            Some(why) => Err(RemoteFailure::Lost(RuntimeError::PeerLost {
                node: node.to_owned(),
                detail: format!("its streamed answer broke the protocol: {why}"),
            })),
            None => result,
        };
        if !self.forwarded {
            if result.is_err() {
                stream.restore(self.to.into_sender());
            }
            return result;
        }
        result.map_err(|failure| match failure {
            RemoteFailure::Lost(e) | RemoteFailure::Refused(e) => RemoteFailure::Failed(e),
            failed => failed,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tern_cluster::NodeName;
    use tern_wire::peer::RemoteOutcome;
    use tern_wire::{ApiError, ErrorCode, Timings};

    const LIMIT: usize = 1 << 20;

    fn encode(r: &PeerResponse) -> Vec<u8> {
        tern_wire::encode(r, LIMIT).unwrap()
    }

    #[test]
    fn an_executed_answer_is_the_outcome_with_the_peer_timings_and_its_own_time() {
        let answer = encode(&PeerResponse::Executed(RemoteOutcome {
            output: b"out".to_vec(),
            cold_start: true,
            timings: Timings {
                exec_us: 7,
                ..Timings::default()
            },
            node: "b".into(),
            peer_us: 1_234,
        }));
        let (outcome, peer) = classify("b", Ok(answer), LIMIT).unwrap();
        assert_eq!(peer, Duration::from_micros(1_234));
        assert_eq!(&outcome.output[..], b"out");
        assert!(outcome.cold_start);
        assert_eq!(outcome.timings.exec_us, 7);
        assert_eq!(&*outcome.node, "b");
    }

    #[test]
    fn a_retryable_error_is_refused_and_any_other_is_the_answer() {
        for code in [
            ErrorCode::Overloaded,
            ErrorCode::Unavailable,
            ErrorCode::GuestTrap,
            ErrorCode::Timeout,
            ErrorCode::InvalidRequest,
        ] {
            let answer = encode(&PeerResponse::Error(ApiError::new(code, "x")));
            match classify("b", Ok(answer), LIMIT) {
                Err(RemoteFailure::Refused(_)) => assert!(code.is_retryable(), "{code:?}"),
                Err(RemoteFailure::Failed(RuntimeError::Remote { node, error })) => {
                    assert!(!code.is_retryable(), "{code:?}");
                    assert_eq!((node.as_str(), error.code), ("b", code));
                }
                other => panic!("{code:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_broken_link_or_garbage_is_lost_and_no_connection_is_refused() {
        let broken = LinkError::Lost {
            peer: "b".parse::<NodeName>().unwrap(),
            detail: "connection closed".into(),
        };
        assert!(matches!(
            classify("b", Err(broken), LIMIT),
            Err(RemoteFailure::Lost(RuntimeError::PeerLost { .. }))
        ));
        assert!(matches!(
            classify("b", Ok(vec![0xff; 9]), LIMIT),
            Err(RemoteFailure::Lost(_))
        ));
        assert!(matches!(
            classify("b", Ok(encode(&PeerResponse::Ack)), LIMIT),
            Err(RemoteFailure::Lost(_))
        ));
        let not_connected = LinkError::NotConnected("b".parse().unwrap());
        assert!(matches!(
            classify("b", Err(not_connected), LIMIT),
            Err(RemoteFailure::Refused(RuntimeError::PeerNotConnected(_)))
        ));
    }

    fn part(p: &AnswerPart) -> Vec<u8> {
        tern_wire::encode(p, LIMIT).unwrap()
    }

    fn head() -> AnswerPart {
        AnswerPart::Head {
            status: 200,
            headers: vec![("content-type".into(), b"text/plain".to_vec())],
            cold_start: false,
            // What a peer claims is replaced by whom the link asked.
            node: Some("mallory".into()),
        }
    }

    fn lost() -> RemoteFailure {
        RemoteFailure::Lost(RuntimeError::PeerLost {
            node: "b".into(),
            detail: "gone".into(),
        })
    }

    #[test]
    fn a_peers_parts_pass_on_in_order_naming_the_peer_asked_in_the_head() {
        let (caller, mut got) = tokio::sync::mpsc::unbounded_channel();
        let mut relay = Relay::new("b", caller, LIMIT, LIMIT);
        relay.pass(&part(&head()));
        relay.pass(&part(&AnswerPart::Data(b"drip 0\n".to_vec())));
        relay.pass(&part(&AnswerPart::End));
        assert_eq!(
            relay.settle("b", Ok(7), &AnswerStream::default()).unwrap(),
            7
        );
        let AnswerPart::Head { node, status, .. } = got.try_recv().unwrap() else {
            panic!("the head comes first");
        };
        assert_eq!((node.as_deref(), status), (Some("b"), 200));
        assert_eq!(
            got.try_recv().unwrap(),
            AnswerPart::Data(b"drip 0\n".to_vec())
        );
        assert_eq!(got.try_recv().unwrap(), AnswerPart::End);
        assert_eq!(
            got.try_recv(),
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected),
            "the relay let go of the caller"
        );
    }

    #[test]
    fn once_a_part_passed_on_a_lost_or_refused_run_is_the_callers_failure() {
        for failure in [
            lost(),
            RemoteFailure::Refused(RuntimeError::PeerNotConnected("b".into())),
        ] {
            let (caller, _got) = tokio::sync::mpsc::unbounded_channel();
            let mut relay = Relay::new("b", caller, LIMIT, LIMIT);
            relay.pass(&part(&head()));
            assert!(matches!(
                relay.settle::<()>("b", Err(failure), &AnswerStream::default()),
                Err(RemoteFailure::Failed(_))
            ));
        }
        // Before any part the run may still go elsewhere, and stream from there: the caller's
        // end goes back to the unit's stream.
        let (stream, mut got) = AnswerStream::new();
        let relay = Relay::new("b", stream.take().unwrap(), LIMIT, LIMIT);
        assert!(!stream.is_open());
        assert!(matches!(
            relay.settle::<()>("b", Err(lost()), &stream),
            Err(RemoteFailure::Lost(_))
        ));
        assert!(stream.is_open(), "the next run can stream");
        stream.take().unwrap().send(AnswerPart::End).unwrap();
        assert_eq!(got.try_recv().unwrap(), AnswerPart::End);
    }

    #[test]
    fn a_peer_that_breaks_the_part_protocol_passes_nothing_more_and_is_lost() {
        let (caller, mut got) = tokio::sync::mpsc::unbounded_channel();
        let mut relay = Relay::new("b", caller, LIMIT, LIMIT);
        relay.pass(&part(&AnswerPart::Data(b"x".to_vec())));
        assert!(relay.is_broken());
        relay.pass(&part(&head()));
        assert!(
            got.try_recv().is_err(),
            "nothing before the head, nor after"
        );
        match relay.settle("b", Ok(()), &AnswerStream::default()) {
            Err(RemoteFailure::Lost(e)) => assert!(e.to_string().contains("out of order"), "{e}"),
            other => panic!("{other:?}"),
        }
        // Garbage, and more than the budget (the head's fields and overhead fit, the data
        // does not): after the head has gone on, the caller's failure.
        let (caller, mut got) = tokio::sync::mpsc::unbounded_channel();
        let mut relay = Relay::new("b", caller, 200, LIMIT);
        relay.pass(&part(&head()));
        relay.pass(&part(&AnswerPart::Data(vec![b'x'; 200])));
        relay.pass(&part(&AnswerPart::End));
        assert!(matches!(got.try_recv(), Ok(AnswerPart::Head { .. })));
        assert!(got.try_recv().is_err());
        match relay.settle("b", Ok(()), &AnswerStream::default()) {
            Err(RemoteFailure::Failed(e)) => assert!(e.to_string().contains("output cap"), "{e}"),
            other => panic!("{other:?}"),
        }
        let (caller, _got) = tokio::sync::mpsc::unbounded_channel();
        let mut relay = Relay::new("b", caller, LIMIT, LIMIT);
        relay.pass(b"\xff\xff\xff");
        assert!(matches!(
            relay.settle("b", Ok(()), &AnswerStream::default()),
            Err(RemoteFailure::Lost(_))
        ));
    }
}
