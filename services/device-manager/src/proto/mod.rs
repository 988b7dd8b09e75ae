//! Generated code for the kubelet device plugin API (see `proto/README.md`).

/// `v1beta1`: Registration (kubelet) and DevicePlugin (us) services.
#[rustfmt::skip]
#[allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]
pub mod v1beta1;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial message buffer of every RPC, request or response, in bytes.
/// Device plugin messages are small (a ListAndWatch list of a per-node
/// resource is a few dozen bytes); the buffer grows when one is larger.
pub const CODEC_BUFFER: usize = 512;

/// prost encoding with a [`CODEC_BUFFER`]-byte initial buffer instead of
/// tonic's 8 KiB. A ListAndWatch stream keeps its encode buffer for as long
/// as the kubelet stays connected, so with one stream per resource this is
/// 8 KiB less per resource (`docs/decisions/0015-plugin-memory.md`).
#[derive(Debug, Clone)]
pub struct SmallCodec<T, U>(std::marker::PhantomData<(T, U)>);

impl<T, U> Default for SmallCodec<T, U> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

fn settings() -> BufferSettings {
    // 32 KiB: tonic's default yield threshold.
    BufferSettings::new(CODEC_BUFFER, 32 * 1024)
}

impl<T, U> Codec for SmallCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
