// Android-only input helpers: Bitmap → RGBA bytes → the model's preprocessing (resize, colour, normalise) in Rust.
package dev.pupil

import android.graphics.Bitmap
import java.nio.ByteBuffer
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.withContext

/** The bitmap's pixels as RGBA8888 bytes, row-major (`width * height * 4`), converting other configs first. */
fun Bitmap.toRgbaBytes(): ByteArray {
    val argb = if (config == Bitmap.Config.ARGB_8888) this else copy(Bitmap.Config.ARGB_8888, false)
    // ARGB_8888 is stored as R, G, B, A bytes in memory: exactly the RGBA layout the bindings expect.
    val buf = ByteBuffer.allocate(argb.byteCount)
    argb.copyPixelsToBuffer(buf)
    if (argb !== this) argb.recycle()
    val stride = argb.rowBytes
    val w = width
    val h = height
    if (stride == w * 4) return buf.array()
    val out = ByteArray(w * h * 4)
    for (y in 0 until h) System.arraycopy(buf.array(), y * stride, out, y * w * 4, w * 4)
    return out
}

/** Predicts a bitmap (any size: the model's spec resizes or refuses it), blocking. */
fun PupilModel.predictBlocking(bitmap: Bitmap): Prediction =
    predictRgbaBlocking(bitmap.toRgbaBytes(), bitmap.width, bitmap.height)

/** Predicts a bitmap on [Dispatchers.Default]. */
suspend fun PupilModel.predict(bitmap: Bitmap): Prediction =
    withContext(Dispatchers.Default) { predictBlocking(bitmap) }
