//! The relay's byte buffers: what was read from one side with the framing state of the message
//! passing through, and what is queued for the other side.

use super::*;

/// Read buffers grow by this much when they run low.
const READ_CHUNK: usize = 128 * 1024;
/// At most this many slices per vectored write.
const MAX_IOVECS: usize = 64;

/// Bytes read from one side, with the framing state of the message being passed through.
#[derive(Default)]
pub(super) struct Inbound {
    pub(super) buf: BytesMut,
    /// Bytes at the front of `buf` that are framed and may be forwarded as they are.
    pub(super) ready: usize,
    /// Bytes of the current message, not yet read, that pass through without inspection.
    pub(super) body_left: usize,
    /// Bytes of the current message, not yet read, to drop (a rejected oversized statement).
    pub(super) discard_left: usize,
}

impl Inbound {
    pub(super) fn available(&self) -> usize {
        self.buf.len() - self.ready
    }

    /// At a message boundary: nothing half-forwarded or half-dropped.
    pub(super) fn at_boundary(&self) -> bool {
        self.body_left == 0 && self.discard_left == 0
    }

    /// Starts passing through a message of `total` bytes (type byte included) without looking
    /// at its body: what has arrived is framed now, the rest as it comes.
    pub(super) fn pass(&mut self, total: usize) {
        let n = total.min(self.available());
        self.ready += n;
        self.body_left = total - n;
    }

    /// Whether the whole next message of `total` bytes has arrived; if not, room is made for it.
    pub(super) fn holds_whole(&mut self, total: usize) -> bool {
        let available = self.available();
        if available < total {
            self.buf.reserve(total - available);
        }
        available >= total
    }

    /// Passes bytes of the current pass-through message; true when it is complete.
    pub(super) fn pass_body(&mut self) -> bool {
        let n = self.body_left.min(self.available());
        self.ready += n;
        self.body_left -= n;
        self.body_left == 0
    }

    /// Queues the framed bytes for the other side.
    pub(super) fn release(&mut self, out: &mut Outbound) {
        if self.ready > 0 {
            out.push(self.buf.split_to(self.ready).freeze());
            self.ready = 0;
        }
    }
}

/// Bytes queued for one side.
#[derive(Default)]
pub(super) struct Outbound {
    pub(super) queue: VecDeque<Bytes>,
    pub(super) len: usize,
    needs_flush: bool,
}

impl Outbound {
    pub(super) fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.len += bytes.len();
            self.queue.push_back(bytes);
        }
    }

    pub(super) fn consume(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let Some(front) = self.queue.front_mut() else {
                break;
            };
            if n >= front.len() {
                n -= front.len();
                self.queue.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }

    /// Everything queued has been written and flushed.
    pub(super) fn flushed(&self) -> bool {
        self.queue.is_empty() && !self.needs_flush
    }

    /// Writes as much as the socket takes; Ok(true) if anything was written.
    #[inline]
    pub(super) fn poll_write<S: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        cx: &mut Context<'_>,
    ) -> io::Result<bool> {
        if self.flushed() {
            return Ok(false);
        }
        self.poll_write_queued(stream, cx)
    }

    fn poll_write_queued<S: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        cx: &mut Context<'_>,
    ) -> io::Result<bool> {
        let mut wrote = false;
        while let Some(front) = self.queue.front() {
            let written = if self.queue.len() == 1 {
                // The usual case (one read's worth of messages): no slice array to fill.
                Pin::new(&mut *stream).poll_write(cx, front)
            } else {
                let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
                let mut count = 0;
                for (slot, bytes) in slices.iter_mut().zip(&self.queue) {
                    *slot = IoSlice::new(bytes);
                    count += 1;
                }
                Pin::new(&mut *stream).poll_write_vectored(cx, &slices[..count])
            };
            match written {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => {
                    self.consume(n);
                    wrote = true;
                    self.needs_flush = true;
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => break,
            }
        }
        if self.queue.is_empty() && self.needs_flush {
            // TLS streams buffer records internally; TCP flush is free.
            match Pin::new(&mut *stream).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.needs_flush = false,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => {}
            }
        }
        Ok(wrote)
    }
}

/// Makes room for the next read. An empty buffer that nothing else shares any more (what it
/// passed on has been written) starts again at the front of its allocation, so a session of
/// small messages keeps reusing its first pages instead of walking through all of them, which
/// made every long-lived session's whole buffers resident over time.
pub(super) fn reserve(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() < READ_CHUNK {
        // Fails (and allocates nothing) while a forwarded slice is still queued.
        let _ = buf.try_reclaim(READ_CHUNK);
    }
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `n` bytes into the buffer's spare room and passes them on, as the relay does.
    fn read_and_pass(buf: &mut BytesMut, n: usize) -> Bytes {
        reserve(buf);
        buf.extend_from_slice(&vec![b'Q'; n]);
        buf.split_to(n).freeze()
    }

    #[test]
    fn an_emptied_buffer_reads_at_the_front_of_its_allocation_again() {
        let mut buf = BytesMut::new();
        reserve(&mut buf);
        let front = buf.as_ptr();
        for _ in 0..10_000 {
            drop(read_and_pass(&mut buf, 100));
            reserve(&mut buf);
            assert_eq!(
                buf.as_ptr(),
                front,
                "small messages walked through the buffer"
            );
        }
    }

    #[test]
    fn a_buffer_whose_bytes_are_still_queued_is_neither_rewound_nor_reallocated() {
        let mut buf = BytesMut::new();
        reserve(&mut buf);
        let front = buf.as_ptr();
        let queued = read_and_pass(&mut buf, 100);
        reserve(&mut buf);
        // The queued slice still owns the front: the next read goes after it, in place.
        assert_eq!(buf.as_ptr(), front.wrapping_add(100));
        assert_eq!(&queued[..], &[b'Q'; 100][..]);
        drop(queued);
        reserve(&mut buf);
        assert_eq!(buf.as_ptr(), front);
    }
}
