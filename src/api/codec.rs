//! The gRPC codecs: prost, with a small first encode buffer, and on the server a
//! request decoder whose failures are the caller's fault.
//!
//! tonic gives every call an encode buffer of 8 KiB up front, which for a Watch
//! stream lives as long as the stream: most of an idle stream's memory. Deltas are
//! usually a few hundred bytes, so each call here starts with [`FIRST_BUFFER`]
//! bytes; a larger message grows the buffer as it is encoded (one reallocation).
//! Decoding keeps tonic's buffer defaults.
//!
//! tonic's prost decoder reports a message it cannot decode (a string field that is
//! not UTF-8, a truncated field, a wrong wire type) as INTERNAL, which tells the
//! caller the server is broken. On the server such a message is the caller's
//! mistake: [`ServerCodec`] reports it as INVALID_ARGUMENT, saying what was wrong.

use std::marker::PhantomData;

use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstEncoder};

/// Bytes an encode buffer starts with.
pub const FIRST_BUFFER: usize = 512;
/// tonic's default: how much is encoded before a streaming call yields.
const YIELD_THRESHOLD: usize = 32 * 1024;

fn encode_settings() -> BufferSettings {
    BufferSettings::new(FIRST_BUFFER, YIELD_THRESHOLD)
}

/// [`ProstCodec`] with a [`FIRST_BUFFER`]-byte first encode buffer: the client's codec.
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
    type Decoder = tonic_prost::ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(encode_settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::default())
    }
}

/// The server's codec: [`LeanCodec`]'s encoder, and a decoder that refuses an
/// undecodable request with INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct ServerCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for ServerCodec<T, U> {
    fn default() -> Self {
        ServerCodec(PhantomData)
    }
}

impl<T, U> Codec for ServerCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(encode_settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder(PhantomData)
    }
}

/// Decodes a request message; a message that is not valid protobuf for its type is
/// INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct RequestDecoder<U>(PhantomData<U>);

impl<U: prost::Message + Default> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        decode_request(buf).map(Some)
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// Decodes one request message of type `U`, refusing what is not one.
pub fn decode_request<U: prost::Message + Default>(buf: impl bytes::Buf) -> Result<U, Status> {
    U::decode(buf).map_err(|e| {
        Status::invalid_argument(format!(
            "the request is not a valid {} message: {e}; string fields must be UTF-8",
            std::any::type_name::<U>()
                .rsplit("::")
                .next()
                .unwrap_or("request")
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto;

    #[test]
    fn a_string_field_that_is_not_utf8_is_invalid_argument() {
        // Field 1 (key), length-delimited, 2 bytes that are not UTF-8.
        let bytes: &[u8] = &[0x0a, 0x02, 0xff, 0xfe];
        let status = match decode_request::<proto::PutRequest>(bytes) {
            Err(s) => s,
            Ok(m) => panic!("decoded {m:?}"),
        };
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("PutRequest"),
            "{}",
            status.message()
        );
        assert!(status.message().contains("UTF-8"), "{}", status.message());
    }

    #[test]
    fn a_truncated_message_is_invalid_argument() {
        let bytes: &[u8] = &[0x0a, 0x10, b'a'];
        let status = decode_request::<proto::GetRequest>(bytes).err();
        assert_eq!(status.map(|s| s.code()), Some(tonic::Code::InvalidArgument));
    }
}
