//! How protocol messages are cut into WebSocket frames, for both ends.
//!
//! tungstenite keeps a connection's read buffer at the size of the largest
//! frame it ever received, and its write buffer at the size of the largest
//! frame it ever sent; neither shrinks. A message sent as one frame (a
//! report with 24 KiB of output, a 48 KiB file chunk, a 256 KiB update
//! chunk) would so cost both ends that much for the rest of the connection,
//! and the hub that much times every agent of a fan-out (issue #21,
//! docs/performance.md). Messages longer than [`MAX_SENT_FRAME`] therefore
//! go out as fragments (RFC 6455 §5.4), which every WebSocket peer
//! reassembles, 0.1.0's included.

use futures_util::{Sink, SinkExt};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{Bytes, Error, Message};

/// Largest WebSocket frame either end sends.
pub const MAX_SENT_FRAME: usize = 1024;

/// Where to cut `text` into frames of at most `max` bytes (at least 4),
/// each cut on a character boundary so that every fragment is valid UTF-8
/// on its own (RFC 6455 allows cuts inside a character; not every
/// decoder takes them).
pub fn fragment_bounds(text: &str, max: usize) -> Vec<std::ops::Range<usize>> {
    let max = max.max(4);
    let mut out = Vec::with_capacity(text.len() / max + 1);
    let mut start = 0;
    while text.len() - start > max {
        let mut end = start + max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        out.push(start..end);
        start = end;
    }
    out.push(start..text.len());
    out
}

/// Sends one text message in frames of at most [`MAX_SENT_FRAME`] bytes;
/// short ones (nearly all: heartbeats, acks, small reports) as one frame.
pub async fn send_text<S>(ws: &mut S, text: String) -> Result<(), Error>
where
    S: Sink<Message, Error = Error> + Unpin,
{
    send_text_framed(ws, text, MAX_SENT_FRAME).await
}

/// [`send_text`] with another frame bound (the fan-out bench compares).
pub async fn send_text_framed<S>(ws: &mut S, text: String, max: usize) -> Result<(), Error>
where
    S: Sink<Message, Error = Error> + Unpin,
{
    feed_text(ws, text, max).await?;
    ws.flush().await
}

/// Queues one text message as [`send_text_framed`] cuts it, without
/// flushing: several messages then leave in one write (the caller
/// flushes).
pub async fn feed_text<S>(ws: &mut S, text: String, max: usize) -> Result<(), Error>
where
    S: Sink<Message, Error = Error> + Unpin,
{
    if text.len() <= max {
        return ws.feed(Message::Text(text.into())).await;
    }
    let bounds = fragment_bounds(&text, max);
    let all = Bytes::from(text.into_bytes());
    let last = bounds.len().saturating_sub(1);
    for (i, r) in bounds.into_iter().enumerate() {
        let opcode = if i == 0 { OpCode::Data(Data::Text) } else { OpCode::Data(Data::Continue) };
        ws.feed(Message::Frame(Frame::message(all.slice(r), opcode, i == last))).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_cover_the_text_on_character_boundaries() {
        for text in ["", "a", &"x".repeat(1024), &"x".repeat(1025), &"é".repeat(700), &"日本語".repeat(300)] {
            let bounds = fragment_bounds(text, 1024);
            let mut next = 0;
            for r in &bounds {
                assert_eq!(r.start, next, "contiguous");
                assert!(r.len() <= 1024, "bounded: {}", r.len());
                assert!(text.get(r.clone()).is_some(), "on character boundaries");
                next = r.end;
            }
            assert_eq!(next, text.len(), "the whole text");
            // A cut moves back at most 3 bytes (a UTF-8 character is ≤ 4).
            assert!(bounds.len() <= text.len().div_ceil(1021).max(1), "few fragments: {}", bounds.len());
        }
    }

    /// Fragments sent by one end come out as the same message at the
    /// other, over a real WebSocket pair (tungstenite both sides).
    #[tokio::test]
    async fn a_fragmented_message_arrives_whole() {
        use futures_util::StreamExt;
        use tokio_tungstenite::WebSocketStream;
        use tokio_tungstenite::tungstenite::protocol::Role;
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut client = WebSocketStream::from_raw_socket(a, Role::Client, None).await;
        let mut server = WebSocketStream::from_raw_socket(b, Role::Server, None).await;
        let text = format!("{{\"output\":\"{}\",\"info\":\"{}\"}}", "x".repeat(5000), "é日".repeat(900));
        let sent = text.clone();
        let (sending, got) = tokio::join!(send_text(&mut client, sent), server.next());
        sending.unwrap();
        match got {
            Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), text),
            other => panic!("expected the whole text, got {other:?}"),
        }
    }
}
