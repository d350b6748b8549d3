// Conversions between Kotlin float arrays and the little-endian f32 bytes pupil's bindings take and return.
package dev.pupil

import java.nio.ByteBuffer
import java.nio.ByteOrder

/** This array as little-endian f32 bytes (what `Predictor.predict` takes): one bulk copy, no boxing. */
fun FloatArray.toLeBytes(): ByteArray {
    val buf = ByteBuffer.allocate(size * 4).order(ByteOrder.LITTLE_ENDIAN)
    buf.asFloatBuffer().put(this)
    return buf.array()
}

/** Little-endian f32 bytes (what `PredictionResult.logits` holds) as a float array. */
fun ByteArray.leBytesToFloats(): FloatArray {
    require(size % 4 == 0) { "expected a whole number of f32 values (4 bytes each), got $size bytes" }
    val out = FloatArray(size / 4)
    ByteBuffer.wrap(this).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().get(out)
    return out
}

/** A direct, native-order buffer holding [floats] f32 values: what [NativePredictor.predictInto] reads and writes. */
fun directFloatBuffer(floats: Int): ByteBuffer =
    ByteBuffer.allocateDirect(floats * 4).order(ByteOrder.LITTLE_ENDIAN)
