//! The JNI fast path behind Kotlin's `dev.pupil.NativePredictor`: `predictInto` reads and writes direct `ByteBuffer`s in place.
//!
//! uniffi copies every argument through a serialisation buffer; for a model run per camera frame that copy (and the
//! `ByteArray` it allocates) is avoidable. Here the input is read straight from the direct buffer's memory (no copy
//! when it is 4-byte aligned, which `ByteBuffer.allocateDirect` guarantees) and the outputs are written straight into
//! the output buffer. Errors become `IllegalArgumentException` (bad arguments: wrong sizes, non-direct buffers, NaN
//! input, a model that does not load) or `IllegalStateException` (a closed predictor, an inference failure, a panic).
//!
//! Every entry point goes through `EnvUnowned::with_env`, which catches panics, and [`ThrowTyped`], which turns
//! errors into those exceptions: nothing unwinds into the JVM.

use std::sync::Arc;

use jni::errors::ErrorPolicy;
use jni::objects::{JByteArray, JByteBuffer, JClass, JString};
use jni::strings::JNIString;
use jni::sys::{jint, jlong};
use jni::{Env, EnvUnowned};
use pupil_runtime::{Batch, Model, ModelOptions};

use crate::error::panic_message;

/// Why a native call failed, deciding which Java exception is thrown.
#[derive(Debug, thiserror::Error)]
pub enum JniFailure {
    /// The caller passed something wrong: `IllegalArgumentException`.
    #[error("{0}")]
    Argument(String),
    /// The predictor cannot do it now (closed, failed inside): `IllegalStateException`.
    #[error("{0}")]
    State(String),
    /// A JNI call failed (usually an exception is already pending, which then wins).
    #[error("JNI call failed: {0}")]
    Jni(#[from] jni::errors::Error),
}

impl From<pupil_runtime::Error> for JniFailure {
    fn from(e: pupil_runtime::Error) -> Self {
        use pupil_runtime::Error as E;
        match e {
            E::Inference { .. } | E::Internal { .. } => JniFailure::State(e.to_string()),
            _ => JniFailure::Argument(e.to_string()),
        }
    }
}

/// Error policy: [`JniFailure::Argument`] → `IllegalArgumentException`, everything else and panics →
/// `IllegalStateException`; a Java exception already pending is left to propagate.
pub struct ThrowTyped;

const ILLEGAL_ARGUMENT: &str = "java/lang/IllegalArgumentException";
const ILLEGAL_STATE: &str = "java/lang/IllegalStateException";

fn throw(env: &mut Env<'_>, class: &str, msg: &str) {
    if env.exception_check() {
        return;
    }
    // `throw_new` reports the (now pending) exception as `Err(JavaException)`: that is the point.
    let _ = env.throw_new(JNIString::from(class), JNIString::from(msg));
}

impl<T: Default> ErrorPolicy<T, JniFailure> for ThrowTyped {
    type Captures<'unowned_env_local: 'native_method, 'native_method> = ();

    fn on_error<'unowned_env_local: 'native_method, 'native_method>(
        env: &mut Env<'unowned_env_local>,
        _cap: &mut Self::Captures<'unowned_env_local, 'native_method>,
        err: JniFailure,
    ) -> jni::errors::Result<T> {
        match &err {
            JniFailure::Argument(m) => throw(env, ILLEGAL_ARGUMENT, m),
            JniFailure::State(m) => throw(env, ILLEGAL_STATE, m),
            JniFailure::Jni(_) => throw(env, ILLEGAL_STATE, &err.to_string()),
        }
        Ok(T::default())
    }

    fn on_panic<'unowned_env_local: 'native_method, 'native_method>(
        env: &mut Env<'unowned_env_local>,
        _cap: &mut Self::Captures<'unowned_env_local, 'native_method>,
        payload: Box<dyn std::any::Any + Send + 'static>,
    ) -> jni::errors::Result<T> {
        let msg = format!("internal error (please report): panic in pupil: {}", panic_message(payload.as_ref()));
        // Dropping a payload can itself panic; leak it instead.
        std::mem::forget(payload);
        throw(env, ILLEGAL_STATE, &msg);
        Ok(T::default())
    }
}

fn options(threads: jint) -> Result<ModelOptions, JniFailure> {
    if threads < 1 {
        return Err(JniFailure::Argument(format!("threads must be at least 1, got {threads}")));
    }
    Ok(ModelOptions { batch: Batch::Fixed(1), threads: threads as usize, top_k: 1 })
}

fn into_handle(model: Model) -> jlong {
    Arc::into_raw(Arc::new(model)) as jlong
}

/// Borrows the model behind a handle for the duration of a call.
///
/// # Safety
/// `handle` must come from [`into_handle`] and not have been freed. The Kotlin class guarantees this: it hands out
/// the handle only under a read lock and frees it under the write lock, exactly once.
unsafe fn model_ref<'a>(handle: jlong) -> Result<&'a Model, JniFailure> {
    if handle == 0 {
        return Err(JniFailure::State("the NativePredictor is closed".into()));
    }
    // SAFETY: see the function's contract.
    Ok(unsafe { &*(handle as *const Model) })
}

/// `NativePredictor.nativeLoadBytes(model: ByteArray, threads: Int): Long`
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_pupil_NativePredictor_nativeLoadBytes<'local>(
    mut unowned_env: EnvUnowned<'local>,
    _class: JClass<'local>,
    model: JByteArray<'local>,
    threads: jint,
) -> jlong {
    unowned_env
        .with_env(|env| -> Result<jlong, JniFailure> {
            if model.is_null() {
                return Err(JniFailure::Argument("model bytes must not be null".into()));
            }
            let bytes = env.convert_byte_array(&model)?;
            Ok(into_handle(Model::from_bytes(&bytes, options(threads)?)?))
        })
        .resolve::<ThrowTyped>()
}

/// `NativePredictor.nativeLoadPath(path: String, threads: Int): Long`
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_pupil_NativePredictor_nativeLoadPath<'local>(
    mut unowned_env: EnvUnowned<'local>,
    _class: JClass<'local>,
    path: JString<'local>,
    threads: jint,
) -> jlong {
    unowned_env
        .with_env(|env| -> Result<jlong, JniFailure> {
            if path.is_null() {
                return Err(JniFailure::Argument("path must not be null".into()));
            }
            let path = path.try_to_string(env)?;
            Ok(into_handle(Model::load(&path, options(threads)?)?))
        })
        .resolve::<ThrowTyped>()
}

/// `NativePredictor.nativeExampleLen(handle: Long): Int`
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_pupil_NativePredictor_nativeExampleLen<'local>(
    mut unowned_env: EnvUnowned<'local>,
    _class: JClass<'local>,
    handle: jlong,
) -> jint {
    unowned_env
        .with_env(|_env| -> Result<jint, JniFailure> {
            // SAFETY: the Kotlin class passes a live handle (see `model_ref`).
            Ok(unsafe { model_ref(handle) }?.example_len() as jint)
        })
        .resolve::<ThrowTyped>()
}

/// `NativePredictor.nativeClasses(handle: Long): Int`
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_pupil_NativePredictor_nativeClasses<'local>(
    mut unowned_env: EnvUnowned<'local>,
    _class: JClass<'local>,
    handle: jlong,
) -> jint {
    unowned_env
        .with_env(|_env| -> Result<jint, JniFailure> {
            // SAFETY: the Kotlin class passes a live handle (see `model_ref`).
            Ok(unsafe { model_ref(handle) }?.classes() as jint)
        })
        .resolve::<ThrowTyped>()
}

/// The bytes `[offset, offset + len)` of a direct buffer, checked against its capacity.
fn direct_region(
    env: &Env<'_>,
    buf: &JByteBuffer<'_>,
    offset: jint,
    len: usize,
    what: &str,
) -> Result<*mut u8, JniFailure> {
    if buf.is_null() {
        return Err(JniFailure::Argument(format!("{what} buffer must not be null")));
    }
    let addr = env
        .get_direct_buffer_address(buf)
        .map_err(|_| JniFailure::Argument(format!("{what} must be a direct ByteBuffer (ByteBuffer.allocateDirect)")))?;
    let capacity = env.get_direct_buffer_capacity(buf)?;
    if offset < 0 || offset as usize + len > capacity {
        return Err(JniFailure::Argument(format!(
            "{what} region [{offset}, {offset}+{len}) lies outside the buffer's capacity {capacity}"
        )));
    }
    // SAFETY: offset + len <= capacity, checked above.
    Ok(unsafe { addr.add(offset as usize) })
}

/// `NativePredictor.nativePredictInto(handle, input, inOffset, inBytes, output, outOffset, outBytes)`: runs one
/// example read from `input[inOffset, inOffset + inBytes)` and writes `classes` little-endian `f32` at
/// `output[outOffset]`. The Kotlin side passes the buffers' positions and remaining sizes.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub extern "system" fn Java_dev_pupil_NativePredictor_nativePredictInto<'local>(
    mut unowned_env: EnvUnowned<'local>,
    _class: JClass<'local>,
    handle: jlong,
    input: JByteBuffer<'local>,
    in_offset: jint,
    in_bytes: jint,
    output: JByteBuffer<'local>,
    out_offset: jint,
    out_bytes: jint,
) {
    unowned_env
        .with_env(|env| -> Result<(), JniFailure> {
            // SAFETY: the Kotlin class passes a live handle (see `model_ref`).
            let model = unsafe { model_ref(handle) }?;
            let n_in = model.example_len();
            let n_out = model.classes();
            if in_bytes < 0 || in_bytes as usize != n_in * 4 {
                return Err(JniFailure::Argument(format!(
                    "input has {in_bytes} bytes remaining, expected {} ({n_in} f32 values)",
                    n_in * 4
                )));
            }
            if out_bytes < 0 || (out_bytes as usize) < n_out * 4 {
                return Err(JniFailure::Argument(format!(
                    "output has {out_bytes} bytes remaining, expected at least {} ({n_out} f32 values)",
                    n_out * 4
                )));
            }
            let src = direct_region(env, &input, in_offset, n_in * 4, "input")?;
            let dst = direct_region(env, &output, out_offset, n_out * 4, "output")?;
            let outputs =
                if cfg!(target_endian = "little") && (src as usize).is_multiple_of(std::mem::align_of::<f32>()) {
                    // SAFETY: `src` points at n_in * 4 readable bytes inside the direct buffer (checked), aligned for
                    // f32, and the buffer is kept alive by the `input` local reference for the whole call.
                    let values = unsafe { std::slice::from_raw_parts(src as *const f32, n_in) };
                    model.run(values)?
                } else {
                    // SAFETY: as above, read as bytes.
                    let bytes = unsafe { std::slice::from_raw_parts(src as *const u8, n_in * 4) };
                    let values: Vec<f32> =
                        bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                    model.run(&values)?
                };
            // SAFETY: `dst` points at n_out * 4 writable bytes inside the output buffer (checked).
            let out = unsafe { std::slice::from_raw_parts_mut(dst, n_out * 4) };
            for (chunk, v) in out.chunks_exact_mut(4).zip(&outputs) {
                chunk.copy_from_slice(&v.to_le_bytes());
            }
            Ok(())
        })
        .resolve::<ThrowTyped>()
}

/// `NativePredictor.nativeFree(handle: Long)`: drops the model. Called once, under the Kotlin write lock.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_pupil_NativePredictor_nativeFree<'local>(
    mut unowned_env: EnvUnowned<'local>,
    _class: JClass<'local>,
    handle: jlong,
) {
    unowned_env
        .with_env(|_env| -> Result<(), JniFailure> {
            if handle != 0 {
                // SAFETY: the handle came from `into_handle` and the Kotlin class frees it exactly once.
                drop(unsafe { Arc::from_raw(handle as *const Model) });
            }
            Ok(())
        })
        .resolve::<ThrowTyped>()
}
