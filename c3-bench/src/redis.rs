//! Just enough of a Redis client (RESP2 over TCP) for the baselines:
//! GET, SET, PUBLISH and SUBSCRIBE. Written here rather than pulling in a
//! client crate, so the baseline pays for nothing c3 does not.

use std::io;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// A reply.
#[derive(Debug)]
pub(crate) enum Reply {
    Simple,
    Int,
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

/// One connection.
pub(crate) struct Redis {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
    buf: Vec<u8>,
}

impl Redis {
    pub(crate) async fn connect(addr: &str) -> io::Result<Redis> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        Ok(Redis {
            r: BufReader::new(r),
            w,
            buf: Vec::new(),
        })
    }

    /// Sends one command and reads its reply.
    pub(crate) async fn cmd(&mut self, args: &[&[u8]]) -> io::Result<Reply> {
        self.send(args).await?;
        self.reply().await
    }

    pub(crate) async fn send(&mut self, args: &[&[u8]]) -> io::Result<()> {
        self.buf.clear();
        self.buf
            .extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            self.buf
                .extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            self.buf.extend_from_slice(a);
            self.buf.extend_from_slice(b"\r\n");
        }
        self.w.write_all(&self.buf).await
    }

    /// Reads one reply (for SUBSCRIBE, each message is one).
    pub(crate) async fn reply(&mut self) -> io::Result<Reply> {
        Box::pin(self.reply_inner()).await
    }

    async fn reply_inner(&mut self) -> io::Result<Reply> {
        let mut line = String::new();
        if self.r.read_line(&mut line).await? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "redis closed"));
        }
        let line = line.trim_end();
        let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("bad reply {line:?}"));
        let (tag, rest) = line.split_at(1.min(line.len()));
        match tag {
            "+" => Ok(Reply::Simple),
            "-" => Err(io::Error::other(format!("redis error: {rest}"))),
            ":" => {
                rest.parse::<i64>().map_err(|_| bad())?;
                Ok(Reply::Int)
            }
            "$" => {
                let n: i64 = rest.parse().map_err(|_| bad())?;
                if n < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let mut data = vec![0; usize::try_from(n).map_err(|_| bad())? + 2];
                self.r.read_exact(&mut data).await?;
                data.truncate(data.len() - 2);
                Ok(Reply::Bulk(Some(data)))
            }
            "*" => {
                let n: i64 = rest.parse().map_err(|_| bad())?;
                let mut items = Vec::new();
                for _ in 0..n.max(0) {
                    items.push(self.reply().await?);
                }
                Ok(Reply::Array(items))
            }
            _ => Err(bad()),
        }
    }
}
