//! What an in-stack connection is to the L7 stage, encoded in the token the TCP host reports it with.

/// The owner of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Token {
    /// The client connection of a session.
    Client {
        /// Session slot.
        index: u32,
        /// Session slot generation.
        generation: u32,
    },
    /// The upstream connection of a session.
    Upstream {
        /// Session slot.
        index: u32,
        /// Session slot generation.
        generation: u32,
    },
    /// An idle upstream connection kept for reuse.
    Idle {
        /// Group index.
        group: u32,
        /// Server index in the group.
        server: u32,
    },
}

const KIND_SHIFT: u32 = 62;
const GEN_MASK: u64 = (1 << 30) - 1;

impl Token {
    /// The token as the TCP host stores it (never 0: 0 means "no owner").
    pub fn encode(self) -> u64 {
        let (kind, high, low) = match self {
            Token::Client { index, generation } => (1u64, generation, index),
            Token::Upstream { index, generation } => (2, generation, index),
            Token::Idle { group, server } => (3, group, server),
        };
        kind << KIND_SHIFT | (u64::from(high) & GEN_MASK) << 32 | u64::from(low)
    }

    /// The token of `raw` (`None` for 0 or an unknown kind).
    pub fn decode(raw: u64) -> Option<Token> {
        let high = ((raw >> 32) & GEN_MASK) as u32;
        let low = raw as u32;
        match raw >> KIND_SHIFT {
            1 => Some(Token::Client {
                index: low,
                generation: high,
            }),
            2 => Some(Token::Upstream {
                index: low,
                generation: high,
            }),
            3 => Some(Token::Idle {
                group: high,
                server: low,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_are_never_zero() {
        for t in [
            Token::Client {
                index: 7,
                generation: 9,
            },
            Token::Upstream {
                index: u32::MAX,
                generation: (1 << 30) - 1,
            },
            Token::Idle { group: 2, server: 3 },
        ] {
            assert_ne!(t.encode(), 0);
            assert_eq!(Token::decode(t.encode()), Some(t));
        }
        assert_eq!(Token::decode(0), None);
    }
}
