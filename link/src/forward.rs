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
//! [`ErrorCode::is_retryable`]: tern_wire::ErrorCode::is_retryable

use std::time::Duration;

use bytes::Bytes;
use tern_actors::remote::RemoteFailure;
use tern_actors::{Error as RuntimeError, Outcome};
use tern_runtime::Meu;
use tern_wire::FunctionInfo;
use tern_wire::peer::{PeerResponse, RemoteMeu};

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
}
