//! The gRPC codec: prost, with a small first encode buffer.
//!
//! tonic gives every call an encode buffer of 8 KiB up front, which for a Watch
//! stream lives as long as the stream: most of an idle stream's memory. Deltas are
//! usually a few hundred bytes, so each call here starts with [`FIRST_BUFFER`]
//! bytes; a larger message grows the buffer as it is encoded (one reallocation).
//! Decoding keeps tonic's defaults.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Bytes an encode buffer starts with.
pub const FIRST_BUFFER: usize = 512;
/// tonic's default: how much is encoded before a streaming call yields.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// [`ProstCodec`] with a [`FIRST_BUFFER`]-byte first encode buffer.
#[derive(Debug, Clone)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        LeanCodec(PhantomData)
    }
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(FIRST_BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::default())
    }
}
