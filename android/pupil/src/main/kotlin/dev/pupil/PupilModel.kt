// The hand-written Kotlin API over the generated bindings: AutoCloseable models, FloatArray inputs, suspend calls.
package dev.pupil

import dev.pupil.ffi.ClassScore
import dev.pupil.ffi.PredictionResult
import dev.pupil.ffi.Predictor
import dev.pupil.ffi.PredictorOptions
import dev.pupil.ffi.PupilException
import dev.pupil.ffi.TensorInfo
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.withContext

/** One prediction, with the logits and probabilities unpacked into float arrays. */
class Prediction(
    /** Index of the most probable class. */
    val classIndex: Int,
    /** Its label, when the model has labels. */
    val label: String?,
    /** Its probability. */
    val probability: Float,
    /** The most probable classes, most probable first. */
    val top: List<ClassScore>,
    /** Raw model outputs. */
    val logits: FloatArray,
    /** Softmax of the logits. */
    val probabilities: FloatArray,
) {
    override fun toString(): String =
        "Prediction(class=$classIndex${label?.let { " \"$it\"" } ?: ""}, p=$probability)"

    companion object {
        /** Unpacks the compact record the bindings return. */
        fun of(r: PredictionResult): Prediction = Prediction(
            classIndex = r.classIndex.toInt(),
            label = r.label,
            probability = r.probability,
            top = r.top,
            logits = r.logits.leBytesToFloats(),
            probabilities = r.probabilities.leBytesToFloats(),
        )
    }
}

/**
 * A loaded pupil model. Thread-safe: share one instance across threads. Close it (or use `use {}`) to free the
 * native model; using it after `close()` throws `IllegalStateException`.
 *
 * Every blocking call has a `suspend` twin that runs on [Dispatchers.Default]; errors are [PupilException]
 * subclasses (`PupilException.InputLength`, `PupilException.NotOnnx`, ...) whose message says what was expected.
 */
class PupilModel private constructor(private val predictor: Predictor) : AutoCloseable {
    /** Values in one example (a `FloatArray` passed to [predict] must have exactly this size). */
    val exampleLen: Int = predictor.exampleLen().toInt()
    /** Shape of one example, without the batch dimension (e.g. `[1, 28, 28]`). */
    val exampleShape: IntArray = predictor.exampleShape().map { it.toInt() }.toIntArray()
    /** Number of classes. */
    val classes: Int = predictor.classes().toInt()
    /** Class labels, empty when the model has none. */
    val labels: List<String> = predictor.labels()
    /** The model's input as declared in the file. */
    val inputSpec: TensorInfo = predictor.inputSpec()
    /** The model's outputs as declared in the file. */
    val outputSpecs: List<TensorInfo> = predictor.outputSpecs()
    /** sha256 of the model bytes. */
    val sha256: String = predictor.summary().sha256

    /** The generated uniffi object, for calls this wrapper does not cover. */
    val raw: Predictor get() = predictor

    /** Predicts one example (blocking). */
    fun predictBlocking(input: FloatArray): Prediction = Prediction.of(predictor.predict(input.toLeBytes()))

    /** Predicts one example given as little-endian f32 bytes (blocking). */
    fun predictBytesBlocking(input: ByteArray): Prediction = Prediction.of(predictor.predict(input))

    /** Predicts `input.size / exampleLen` examples laid out one after another (blocking). */
    fun predictBatchBlocking(input: FloatArray): List<Prediction> =
        predictor.predictBatch(input.toLeBytes()).map(Prediction::of)

    /** Decodes a PNG/JPEG, preprocesses it with the model's spec, predicts (blocking). */
    fun predictImageBlocking(encoded: ByteArray): Prediction = Prediction.of(predictor.predictImage(encoded))

    /** Predicts from RGBA8888 pixels, `width * height * 4` bytes (blocking). */
    fun predictRgbaBlocking(pixels: ByteArray, width: Int, height: Int): Prediction =
        Prediction.of(predictor.predictRgba(pixels, width.toUInt(), height.toUInt()))

    /** The [k] most probable classes (blocking). */
    fun topKBlocking(input: FloatArray, k: Int): List<ClassScore> {
        require(k >= 1) { "k must be at least 1, got $k" }
        return predictor.topK(input.toLeBytes(), k.toUInt())
    }

    /** Predicts one example on [Dispatchers.Default]. */
    suspend fun predict(input: FloatArray): Prediction = withContext(Dispatchers.Default) { predictBlocking(input) }

    /** Predicts many examples on [Dispatchers.Default]. */
    suspend fun predictBatch(input: FloatArray): List<Prediction> =
        withContext(Dispatchers.Default) { predictBatchBlocking(input) }

    /** Decodes, preprocesses and predicts an encoded image on [Dispatchers.Default]. */
    suspend fun predictImage(encoded: ByteArray): Prediction =
        withContext(Dispatchers.Default) { predictImageBlocking(encoded) }

    /** Predicts from RGBA8888 pixels on [Dispatchers.Default]. */
    suspend fun predictRgba(pixels: ByteArray, width: Int, height: Int): Prediction =
        withContext(Dispatchers.Default) { predictRgbaBlocking(pixels, width, height) }

    /** The [k] most probable classes, on [Dispatchers.Default]. */
    suspend fun topK(input: FloatArray, k: Int): List<ClassScore> =
        withContext(Dispatchers.Default) { topKBlocking(input, k) }

    /** Frees the native model. Idempotent. */
    override fun close() = predictor.close()

    companion object {
        /** Loads a model from memory (an app asset), blocking. */
        @JvmStatic
        @JvmOverloads
        fun fromBytesBlocking(model: ByteArray, options: PredictorOptions = PredictorOptions()): PupilModel =
            PupilModel(Predictor.fromBytes(model, options))

        /** Loads a model from memory with its model card's JSON (labels, preprocessing), blocking. */
        @JvmStatic
        @JvmOverloads
        fun fromBytesWithCardBlocking(
            model: ByteArray,
            cardJson: String,
            options: PredictorOptions = PredictorOptions(),
        ): PupilModel = PupilModel(Predictor.fromBytesWithCard(model, cardJson, options))

        /** Loads a model file (and `NAME.card.json` beside it), blocking. */
        @JvmStatic
        @JvmOverloads
        fun fromPathBlocking(path: String, options: PredictorOptions = PredictorOptions()): PupilModel =
            PupilModel(Predictor.fromPath(path, options))

        /** Loads a model from memory on [Dispatchers.Default]. */
        suspend fun fromBytes(model: ByteArray, options: PredictorOptions = PredictorOptions()): PupilModel =
            withContext(Dispatchers.Default) { fromBytesBlocking(model, options) }

        /** Loads a model file on [Dispatchers.Default]. */
        suspend fun fromPath(path: String, options: PredictorOptions = PredictorOptions()): PupilModel =
            withContext(Dispatchers.Default) { fromPathBlocking(path, options) }
    }
}
