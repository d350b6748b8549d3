// The JNI fast path: predictInto reads and writes direct ByteBuffers in place (no ByteArray, no serialisation).
package dev.pupil

import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.util.concurrent.locks.ReentrantReadWriteLock
import kotlin.concurrent.read
import kotlin.concurrent.write

/**
 * A model run through JNI on direct buffers: for per-frame inference where [PupilModel]'s `ByteArray` copies matter.
 *
 * ```
 * NativePredictor.fromBytes(modelBytes).use { p ->
 *     val input = directFloatBuffer(p.exampleLen)     // fill with input.putFloat(...), then input.flip()
 *     val output = directFloatBuffer(p.classes)
 *     p.predictInto(input, output)                    // output now holds `classes` floats at its position
 * }
 * ```
 *
 * Both buffers must be direct and little-endian (`order(ByteOrder.LITTLE_ENDIAN)`, which is also the native order
 * of every Android ABI). The input region is `[position, limit)` and must hold exactly [exampleLen] floats; the
 * outputs are written at the output's position (which is left unchanged). Bad arguments throw
 * `IllegalArgumentException`; a closed predictor or an inference failure throws `IllegalStateException`.
 * Thread-safe: any number of threads may call [predictInto] at once; [close] waits for them.
 */
class NativePredictor private constructor(private var handle: Long) : AutoCloseable {
    private val lock = ReentrantReadWriteLock()

    /** Values in one example. */
    val exampleLen: Int = nativeExampleLen(handle)

    /** Values the model writes per example. */
    val classes: Int = nativeClasses(handle)

    /** Runs one example from [input] and writes [classes] floats into [output]. */
    fun predictInto(input: ByteBuffer, output: ByteBuffer) {
        require(input.isDirect) { "input must be a direct ByteBuffer (ByteBuffer.allocateDirect)" }
        require(output.isDirect) { "output must be a direct ByteBuffer (ByteBuffer.allocateDirect)" }
        require(input.order() == ByteOrder.LITTLE_ENDIAN) {
            "input must be little-endian: call input.order(ByteOrder.LITTLE_ENDIAN) before writing floats"
        }
        require(output.order() == ByteOrder.LITTLE_ENDIAN) {
            "output must be little-endian: call output.order(ByteOrder.LITTLE_ENDIAN) before reading floats"
        }
        require(!output.isReadOnly) { "output must be writable" }
        lock.read {
            check(handle != 0L) { "the NativePredictor is closed" }
            nativePredictInto(
                handle,
                input, input.position(), input.remaining(),
                output, output.position(), output.remaining(),
            )
        }
    }

    /** Runs one example from a float array into a new float array (convenience; copies). */
    fun predict(input: FloatArray): FloatArray {
        val inBuf = directFloatBuffer(input.size)
        inBuf.asFloatBuffer().put(input)
        val outBuf = directFloatBuffer(classes)
        predictInto(inBuf, outBuf)
        val out = FloatArray(classes)
        outBuf.asFloatBuffer().get(out)
        return out
    }

    /** Frees the native model. Idempotent; waits for running calls. */
    override fun close() {
        lock.write {
            if (handle != 0L) {
                val h = handle
                handle = 0L
                nativeFree(h)
            }
        }
    }

    companion object {
        init {
            System.loadLibrary("pupil_bindings")
        }

        /** Loads a model from memory with [threads] worker threads. Throws `IllegalArgumentException` if it does not load. */
        @JvmStatic
        @JvmOverloads
        fun fromBytes(model: ByteArray, threads: Int = 1): NativePredictor =
            NativePredictor(nativeLoadBytes(model, threads))

        /** Loads a model file with [threads] worker threads. Throws `IllegalArgumentException` if it does not load. */
        @JvmStatic
        @JvmOverloads
        fun fromPath(path: String, threads: Int = 1): NativePredictor = NativePredictor(nativeLoadPath(path, threads))

        @JvmStatic private external fun nativeLoadBytes(model: ByteArray, threads: Int): Long
        @JvmStatic private external fun nativeLoadPath(path: String, threads: Int): Long
        @JvmStatic private external fun nativeExampleLen(handle: Long): Int
        @JvmStatic private external fun nativeClasses(handle: Long): Int
        @JvmStatic private external fun nativePredictInto(
            handle: Long,
            input: ByteBuffer, inOffset: Int, inBytes: Int,
            output: ByteBuffer, outOffset: Int, outBytes: Int,
        )
        @JvmStatic private external fun nativeFree(handle: Long)
    }
}
