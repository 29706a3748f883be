//! [`SctpConfig`]: the settings of SCTP associations and of the connections on them.

use std::sync::Arc;
use std::time::Duration;

use sctp_proto::TransportConfig;

use super::association::MAX_MESSAGE;
use crate::connection::ConnectionConfig;

/// Settings of SCTP associations (and of the [`Connection`](crate::Connection)s on them).
///
/// ```
/// use connect::transport::sctp::SctpConfig;
/// use std::time::Duration;
///
/// // Across a WAN: internet-style timers.
/// let config = SctpConfig::default().with_rto(
///     Duration::from_secs(3),
///     Duration::from_secs(1),
///     Duration::from_secs(60),
/// );
/// assert_eq!(config.mtu(), 1200);
/// ```
#[derive(Clone, Debug)]
pub struct SctpConfig {
    pub(super) connection: ConnectionConfig,
    pub(super) mtu: usize,
    pub(super) rto_initial: Duration,
    pub(super) rto_min: Duration,
    pub(super) rto_max: Duration,
    pub(super) max_retransmits: usize,
    pub(super) receive_window: u32,
    pub(super) send_buffer: usize,
    pub(super) udp_buffer: usize,
    pub(super) handshake_timeout: Duration,
    pub(super) linger: Duration,
    pub(super) backlog: usize,
    pub(super) max_half_open_per_source: usize,
    pub(super) half_open_timeout: Option<Duration>,
}

/// Timer settings above this are lowered to it: far beyond any useful value, and small enough
/// that `sctp-proto`'s doubling of the retransmission timeout cannot overflow.
const MAX_RTO: Duration = Duration::from_secs(3600);

impl Default for SctpConfig {
    fn default() -> Self {
        Self {
            connection: ConnectionConfig::default(),
            mtu: 1200,
            rto_initial: Duration::from_millis(200),
            rto_min: Duration::from_millis(2),
            rto_max: Duration::from_secs(1),
            max_retransmits: 20,
            receive_window: 1024 * 1024,
            send_buffer: 1024 * 1024,
            udp_buffer: 4 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            linger: Duration::from_secs(5),
            backlog: 128,
            max_half_open_per_source: 8,
            half_open_timeout: None,
        }
    }
}

impl SctpConfig {
    /// Frame and write-buffer settings of the connections (default: [`ConnectionConfig::default`]).
    pub fn with_connection_config(mut self, config: ConnectionConfig) -> Self {
        self.connection = config;
        self
    }

    /// Size of the SCTP packets, that is UDP payloads, sent (default 1200 bytes). On loopback
    /// or a LAN with jumbo frames a larger value means fewer packets. Clamped to 256..=55 000.
    ///
    /// Full-size packets stay within this. A packet bundling many tiny messages can be up to
    /// 18 % larger (`sctp-proto` leaves chunk padding out of its size check), which IP then
    /// fragments; the upper clamp keeps even those under UDP's 65 507-byte limit.
    pub fn with_mtu(mut self, bytes: usize) -> Self {
        self.mtu = bytes.clamp(256, 55_000);
        self
    }

    /// Retransmission timeout: initial value, lower and upper bound (default 200 ms, 2 ms,
    /// 1 s: a LAN. SCTP's internet defaults are 3 s, 1 s, 60 s). Each is capped at one hour.
    ///
    /// The minimum matters most under loss. `sctp-proto` retransmits a lost packet early
    /// (fast retransmit) only while enough later packets get through, and its congestion window
    /// stays small at a few percent loss, so many losses end in a retransmission time-out; with
    /// round trips well under a millisecond (loopback, a LAN) a 20 ms minimum meant 20 ms of
    /// silence per time-out. `sctp-proto` measures round trips in whole milliseconds, so below
    /// 1 ms the timeout is this minimum. A time-out that fires too early costs a few
    /// retransmitted packets, which the peer discards.
    pub fn with_rto(mut self, initial: Duration, min: Duration, max: Duration) -> Self {
        self.rto_initial = initial.min(MAX_RTO);
        self.rto_min = min.min(MAX_RTO);
        self.rto_max = max.max(min).min(MAX_RTO);
        self
    }

    /// Retransmissions of one packet before the peer is declared gone and the association
    /// fails with a time-out (default 20).
    pub fn with_max_retransmits(mut self, count: usize) -> Self {
        self.max_retransmits = count;
        self
    }

    /// Receive window: bytes received but not yet read that an association holds at most
    /// (default 1 MiB).
    pub fn with_receive_window(mut self, bytes: u32) -> Self {
        self.receive_window = bytes.max(MAX_MESSAGE as u32 * 2);
        self
    }

    /// Unacknowledged bytes above which writes wait (default 1 MiB).
    pub fn with_send_buffer(mut self, bytes: usize) -> Self {
        self.send_buffer = bytes.max(1);
        self
    }

    /// `SO_RCVBUF` and `SO_SNDBUF` asked for the UDP socket (default 4 MiB; the kernel may cap
    /// them). Small buffers drop datagrams in bursts, which SCTP then has to retransmit.
    pub fn with_udp_buffer(mut self, bytes: usize) -> Self {
        self.udp_buffer = bytes;
        self
    }

    /// How long an association may take to be established (default 10 s; `Duration::MAX`:
    /// no limit of its own, the INIT retransmissions still give up).
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// How long a dropped connection may take to shut down before it is abandoned (default
    /// 5 s). Also bounds the wait in [`shutdown`](super::shutdown).
    pub fn with_linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Associations a listener holds at most that are being set up, and at most that are set
    /// up but not yet accepted (default 128 each). A new handshake beyond the first bound
    /// replaces the oldest one still pending; an association set up beyond the second is ended
    /// at once.
    pub fn with_backlog(mut self, backlog: usize) -> Self {
        self.backlog = backlog.max(1);
        self
    }

    /// Handshakes from one IP address a listener holds at most (default 8, at least 1). A new
    /// INIT beyond this replaces that address's oldest pending handshake, so a flood of INITs
    /// from one address only competes with itself. `sctp-proto` keeps state from the first
    /// INIT on (it has no stateless cookie, unlike kernel SCTP), which is what this bounds.
    pub fn with_max_half_open_per_source(mut self, count: usize) -> Self {
        self.max_half_open_per_source = count.max(1);
        self
    }

    /// How long a listener keeps a handshake that has answered INIT with INIT ACK and waits
    /// for the COOKIE ECHO (default: 2 s or four initial retransmission timeouts, whichever
    /// is longer, and never more than the [handshake timeout](Self::with_handshake_timeout)).
    /// A real client answers within a round trip, so a short time ages a flood of spoofed
    /// INITs out quickly; a client whose COOKIE ECHO is lost retransmits it within this.
    pub fn with_half_open_timeout(mut self, timeout: Duration) -> Self {
        self.half_open_timeout = Some(timeout);
        self
    }

    /// See [`with_half_open_timeout`](Self::with_half_open_timeout).
    pub fn half_open_timeout(&self) -> Duration {
        self.half_open_timeout
            .unwrap_or_else(|| Duration::from_secs(2).max(self.rto_initial.saturating_mul(4)))
            .min(self.handshake_timeout)
    }

    /// See [`with_connection_config`](Self::with_connection_config).
    pub fn connection_config(&self) -> &ConnectionConfig {
        &self.connection
    }

    /// See [`with_mtu`](Self::with_mtu).
    pub fn mtu(&self) -> usize {
        self.mtu
    }

    pub(super) fn transport_config(&self) -> Arc<TransportConfig> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
        Arc::new(
            TransportConfig::default()
                .with_max_receive_buffer_size(self.receive_window)
                .with_max_send_message_size(MAX_MESSAGE as u32)
                .with_max_receive_message_size(MAX_MESSAGE as u32)
                .with_max_num_inbound_streams(1)
                .with_max_num_outbound_streams(1)
                .with_max_init_retransmits(Some(8))
                .with_max_data_retransmits(Some(self.max_retransmits))
                .with_rto_initial_ms(ms(self.rto_initial))
                .with_rto_min_ms(ms(self.rto_min))
                .with_rto_max_ms(ms(self.rto_max)),
        )
    }
}
