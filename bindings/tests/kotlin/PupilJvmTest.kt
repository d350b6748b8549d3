// Host JVM tests of pupil's Kotlin layer: generated uniffi bindings + PupilModel wrapper + JNI NativePredictor,
// run against the host build of libpupil_bindings and compared bit for bit with Rust's own outputs.
// Run by bindings/scripts/jvm-test.sh (which writes the fixtures with `cargo run --example jvm_fixtures`).
package dev.pupil.test

import dev.pupil.NativePredictor
import dev.pupil.PupilModel
import dev.pupil.directFloatBuffer
import dev.pupil.ffi.Predictor
import dev.pupil.ffi.PredictorOptions
import dev.pupil.ffi.PupilException
import dev.pupil.ffi.TensorDim
import dev.pupil.ffi.versions
import dev.pupil.leBytesToFloats
import dev.pupil.toLeBytes
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.util.Properties
import java.util.concurrent.atomic.AtomicInteger
import java.util.concurrent.atomic.AtomicReference
import javax.imageio.ImageIO
import kotlin.system.exitProcess
import kotlinx.coroutines.runBlocking

class Failure(msg: String) : Exception(msg)

fun check(cond: Boolean, msg: () -> String) {
    if (!cond) throw Failure(msg())
}

inline fun <reified E : Throwable> expectThrows(what: String, block: () -> Unit): E {
    try {
        block()
    } catch (e: Throwable) {
        if (e is E) return e
        throw Failure("$what: expected ${E::class.java.name}, got ${e.javaClass.name}: ${e.message}")
    }
    throw Failure("$what: expected ${E::class.java.name}, nothing was thrown")
}

fun bits(a: FloatArray): List<Int> = a.map { it.toRawBits() }

fun rssKb(): Long =
    File("/proc/self/status").readLines().first { it.startsWith("VmRSS:") }.split(Regex("\\s+"))[1].toLong()

class Fixtures(dir: File) {
    val props = Properties().apply { File(dir, "fixtures.properties").inputStream().use { load(it) } }
    val count = props.getProperty("count").toInt()
    val exampleLen = props.getProperty("example_len").toInt()
    val classes = props.getProperty("classes").toInt()
    val topK = props.getProperty("top_k").toInt()
    val labels = props.getProperty("labels").let { if (it.isEmpty()) emptyList() else it.split(",") }
    val model = File(dir, "model.onnx").readBytes()
    val modelPath = File(dir, "model.onnx").path
    val unsupported = File(dir, "unsupported.onnx").readBytes()
    val digitPng = File(dir, "digit.png").readBytes()
    val digitPngFile = File(dir, "digit.png")
    private val inputs = File(dir, "inputs.bin").readBytes()
    private val logits = File(dir, "logits.bin").readBytes()
    private val probabilities = File(dir, "probabilities.bin").readBytes()
    private val run = File(dir, "run.bin").readBytes()
    val digitLogits = File(dir, "digit_logits.bin").readBytes().leBytesToFloats()

    fun inputBytes(i: Int): ByteArray = inputs.copyOfRange(i * exampleLen * 4, (i + 1) * exampleLen * 4)
    fun input(i: Int): FloatArray = inputBytes(i).leBytesToFloats()
    fun logits(i: Int): FloatArray = logits.copyOfRange(i * classes * 4, (i + 1) * classes * 4).leBytesToFloats()
    fun probabilities(i: Int): FloatArray =
        probabilities.copyOfRange(i * classes * 4, (i + 1) * classes * 4).leBytesToFloats()
    fun run(i: Int): FloatArray = run.copyOfRange(i * classes * 4, (i + 1) * classes * 4).leBytesToFloats()
    fun top(i: Int): List<Int> = props.getProperty("top.$i").split(",").map { it.toInt() }
}

class Runner {
    var passed = 0
    var failed = 0
    fun test(name: String, body: () -> Unit) {
        val t0 = System.nanoTime()
        try {
            body()
            passed++
            println("PASS  $name  (${(System.nanoTime() - t0) / 1_000_000} ms)")
        } catch (e: Throwable) {
            failed++
            println("FAIL  $name: ${e.javaClass.simpleName}: ${e.message}")
            if (e !is Failure) e.printStackTrace(System.out)
        }
    }
}

fun main(args: Array<String>) {
    val fx = Fixtures(File(args.getOrElse(0) { "target/jvm-fixtures" }))
    val stressTotal = args.getOrElse(1) { "100000" }.toInt()
    val r = Runner()
    println("pupil JVM tests: ${fx.count} MNIST digits, model sha256 ${fx.props.getProperty("sha256").take(12)}, library ${versions()}")

    val model = PupilModel.fromBytesBlocking(fx.model)

    r.test("specs and labels match the Rust model") {
        check(model.exampleLen == fx.exampleLen) { "exampleLen ${model.exampleLen} != ${fx.exampleLen}" }
        check(model.classes == fx.classes) { "classes ${model.classes} != ${fx.classes}" }
        check(model.labels == fx.labels) { "labels ${model.labels} != ${fx.labels}" }
        check(model.inputSpec.shapeText == fx.props.getProperty("input_shape")) { "input shape ${model.inputSpec.shapeText}" }
        check(model.inputSpec.name == fx.props.getProperty("input_name")) { "input name ${model.inputSpec.name}" }
        check(model.inputSpec.shape.first() is TensorDim.Symbol || model.inputSpec.shape.first() is TensorDim.Fixed) { "dims" }
        check(model.exampleShape.fold(1) { a, b -> a * b } == fx.exampleLen) { "exampleShape ${model.exampleShape.toList()}" }
        check(model.sha256 == fx.props.getProperty("sha256")) { "sha256 ${model.sha256}" }
    }

    r.test("predict(bytes) equals Rust bit for bit on ${fx.count} MNIST digits") {
        for (i in 0 until fx.count) {
            val p = model.predictBytesBlocking(fx.inputBytes(i))
            check(bits(p.logits) == bits(fx.logits(i))) { "digit $i logits ${p.logits.toList()} != ${fx.logits(i).toList()}" }
            check(bits(p.probabilities) == bits(fx.probabilities(i))) { "digit $i probabilities differ" }
            check(p.top.map { it.index.toInt() } == fx.top(i)) { "digit $i top ${p.top.map { it.index }} != ${fx.top(i)}" }
            check(p.top.size == fx.topK) { "top size ${p.top.size}" }
            check(p.classIndex == fx.top(i)[0]) { "digit $i class ${p.classIndex}" }
            check(p.probability.toRawBits() == fx.probabilities(i)[p.classIndex].toRawBits()) { "digit $i probability" }
            if (fx.labels.isNotEmpty()) check(p.label == fx.labels[p.classIndex]) { "digit $i label ${p.label}" }
        }
    }

    r.test("predict(FloatArray) and suspend predict equal Rust bit for bit") {
        runBlocking {
            for (i in 0 until fx.count) {
                val a = model.predictBlocking(fx.input(i))
                val b = model.predict(fx.input(i))
                check(bits(a.logits) == bits(fx.logits(i))) { "digit $i blocking logits differ" }
                check(bits(b.logits) == bits(fx.logits(i))) { "digit $i suspend logits differ" }
            }
        }
    }

    r.test("predictBatch equals one-by-one predictions") {
        val n = minOf(fx.count, 16)
        val flat = FloatArray(n * fx.exampleLen)
        for (i in 0 until n) fx.input(i).copyInto(flat, i * fx.exampleLen)
        val ps = model.predictBatchBlocking(flat)
        check(ps.size == n) { "batch returned ${ps.size} results for $n inputs" }
        for (i in 0 until n) check(bits(ps[i].logits) == bits(fx.logits(i))) { "batch item $i differs" }
    }

    r.test("topK returns Rust's ranking with its probabilities") {
        for (i in 0 until fx.count) {
            val top = model.topKBlocking(fx.input(i), 3)
            check(top.map { it.index.toInt() } == fx.top(i).take(3)) { "digit $i topK ${top.map { it.index }}" }
            for (c in top) check(c.probability.toRawBits() == fx.probabilities(i)[c.index.toInt()].toRawBits()) { "p" }
            check(top.zipWithNext().all { (a, b) -> a.probability >= b.probability }) { "not sorted" }
        }
    }

    r.test("predictImage(PNG) equals Rust's predict_image bit for bit") {
        val p = model.predictImageBlocking(fx.digitPng)
        check(bits(p.logits) == bits(fx.digitLogits)) { "image logits ${p.logits.toList()} != ${fx.digitLogits.toList()}" }
        check(bits(p.logits) == bits(fx.logits(0))) { "image logits differ from digit 0's" }
    }

    r.test("predictRgba(decoded PNG) equals predictImage") {
        val img = ImageIO.read(fx.digitPngFile)
        val rgba = ByteArray(img.width * img.height * 4)
        // The raw samples: BufferedImage.getRGB would colour-convert a gray PNG (linear gray → sRGB).
        check(img.raster.numBands == 1) { "digit.png should be 8-bit gray, has ${img.raster.numBands} bands" }
        for (y in 0 until img.height) for (x in 0 until img.width) {
            val g = img.raster.getSample(x, y, 0).toByte()
            val o = (y * img.width + x) * 4
            rgba[o] = g; rgba[o + 1] = g; rgba[o + 2] = g; rgba[o + 3] = 255.toByte()
        }
        val p = model.predictRgbaBlocking(rgba, img.width, img.height)
        check(bits(p.logits) == bits(fx.digitLogits)) { "rgba logits ${p.logits.toList()} != ${fx.digitLogits.toList()}" }
        val e = expectThrows<PupilException.ImageSize>("short RGBA") { model.predictRgbaBlocking(ByteArray(10), 28, 28) }
        check(e.message!!.contains("3136") && e.message!!.contains("got 10")) { "message: ${e.message}" }
    }

    r.test("fromPath loads the same model") {
        PupilModel.fromPathBlocking(fx.modelPath).use { m ->
            check(bits(m.predictBlocking(fx.input(1)).logits) == bits(fx.logits(1))) { "fromPath logits differ" }
        }
    }

    r.test("errors arrive as typed PupilExceptions with their messages") {
        val notOnnx = expectThrows<PupilException.NotOnnx>("garbage model") {
            PupilModel.fromBytesBlocking("definitely not a model".toByteArray())
        }
        check(notOnnx.message!!.contains("not an ONNX model")) { "NotOnnx message: ${notOnnx.message}" }
        val unsupported = expectThrows<PupilException.UnsupportedOperator>("unsupported op") {
            PupilModel.fromBytesBlocking(fx.unsupported)
        }
        check(unsupported.message!!.contains("FancyOp")) { "UnsupportedOperator message: ${unsupported.message}" }
        val io = expectThrows<PupilException.Io>("missing file") { PupilModel.fromPathBlocking("/nonexistent/pupil.onnx") }
        check(io.message!!.contains("/nonexistent/pupil.onnx")) { "Io message: ${io.message}" }
        val len = expectThrows<PupilException.InputLength>("short input") { model.predictBlocking(FloatArray(3)) }
        check(len.message!!.contains("expected ${fx.exampleLen}") && len.message!!.contains("got 3")) { "InputLength: ${len.message}" }
        val ragged = expectThrows<PupilException.InputLength>("ragged bytes") { model.predictBytesBlocking(ByteArray(7)) }
        check(ragged.message!!.contains("7 bytes")) { "ragged: ${ragged.message}" }
        val nan = fx.input(0).also { it[5] = Float.NaN }
        val nf = expectThrows<PupilException.NonFiniteInput>("NaN input") { model.predictBlocking(nan) }
        check(nf.message!!.contains("NaN") && nf.message!!.contains("index 5")) { "NonFiniteInput: ${nf.message}" }
        val img = expectThrows<PupilException.UndecodableImage>("garbage image") { model.predictImageBlocking(ByteArray(64) { 7 }) }
        check(img.message!!.contains("decode")) { "UndecodableImage: ${img.message}" }
        val opts = expectThrows<PupilException.Options>("threads 0") {
            PupilModel.fromBytesBlocking(fx.model, PredictorOptions(threads = 0u))
        }
        check(opts.message!!.contains("threads") && opts.message!!.contains("got 0")) { "Options: ${opts.message}" }
        val k0 = expectThrows<PupilException.Options>("k 0") { model.raw.topK(fx.inputBytes(0), 0u) }
        check(k0.message!!.contains("k must be at least 1")) { "k0: ${k0.message}" }
        // Every PupilException is a kotlin.Exception, catchable as one family.
        check(PupilException::class.java.superclass == java.lang.Exception::class.java) { "hierarchy" }
    }

    r.test("a closed predictor throws IllegalStateException, close is idempotent") {
        val m = PupilModel.fromBytesBlocking(fx.model)
        m.close()
        m.close()
        expectThrows<IllegalStateException>("use after close") { m.predictBlocking(fx.input(0)) }
    }

    val native = NativePredictor.fromBytes(fx.model)

    r.test("JNI predictInto on direct buffers equals Rust's run bit for bit") {
        check(native.exampleLen == fx.exampleLen && native.classes == fx.classes) { "native sizes" }
        val input = directFloatBuffer(fx.exampleLen)
        val output = directFloatBuffer(fx.classes)
        for (i in 0 until fx.count) {
            input.clear(); input.put(fx.inputBytes(i)); input.flip()
            output.clear()
            native.predictInto(input, output)
            val out = FloatArray(fx.classes)
            output.asFloatBuffer().get(out)
            check(bits(out) == bits(fx.run(i))) { "digit $i JNI ${out.toList()} != ${fx.run(i).toList()}" }
            check(output.position() == 0 && input.position() == 0) { "positions must be left alone" }
        }
        check(bits(native.predict(fx.input(3))) == bits(fx.run(3))) { "predict(FloatArray) differs" }
    }

    r.test("JNI predictInto honours buffer positions (unaligned input)") {
        val input = ByteBuffer.allocateDirect(fx.exampleLen * 4 + 3).order(ByteOrder.LITTLE_ENDIAN)
        input.position(3); input.put(fx.inputBytes(2)); input.position(3)
        val output = ByteBuffer.allocateDirect(fx.classes * 4 + 8).order(ByteOrder.LITTLE_ENDIAN)
        output.position(8)
        native.predictInto(input, output)
        val out = FloatArray(fx.classes) { output.getFloat(8 + it * 4) }
        check(bits(out) == bits(fx.run(2))) { "offset JNI result differs" }
        NativePredictor.fromPath(fx.modelPath, 2).use { p ->
            val o2 = directFloatBuffer(fx.classes)
            input.position(3)
            p.predictInto(input, o2)
            val got = FloatArray(fx.classes) { o2.getFloat(it * 4) }
            check(bits(got) == bits(out)) { "fromPath (2 threads) ${got.toList()} != ${out.toList()}" }
        }
    }

    r.test("JNI errors are IllegalArgumentException / IllegalStateException with messages") {
        val good = directFloatBuffer(fx.exampleLen).also { it.put(fx.inputBytes(0)); it.flip() }
        val out = directFloatBuffer(fx.classes)
        val heap = expectThrows<IllegalArgumentException>("heap buffer") {
            native.predictInto(ByteBuffer.allocate(fx.exampleLen * 4).order(ByteOrder.LITTLE_ENDIAN), out)
        }
        check(heap.message!!.contains("direct")) { "heap: ${heap.message}" }
        val be = expectThrows<IllegalArgumentException>("big-endian buffer") {
            native.predictInto(ByteBuffer.allocateDirect(fx.exampleLen * 4), out)
        }
        check(be.message!!.contains("little-endian")) { "order: ${be.message}" }
        val short = expectThrows<IllegalArgumentException>("short input") { native.predictInto(directFloatBuffer(3), out) }
        check(short.message!!.contains("expected ${fx.exampleLen * 4}") && short.message!!.contains("12 bytes")) { "short: ${short.message}" }
        val smallOut = expectThrows<IllegalArgumentException>("short output") { native.predictInto(good, directFloatBuffer(1)) }
        check(smallOut.message!!.contains("output")) { "output: ${smallOut.message}" }
        val nan = directFloatBuffer(fx.exampleLen).also { it.put(fx.inputBytes(0)); it.flip(); it.putFloat(8, Float.NaN) }
        val nf = expectThrows<IllegalArgumentException>("NaN") { native.predictInto(nan, out) }
        check(nf.message!!.contains("non-finite") && nf.message!!.contains("index 2")) { "NaN: ${nf.message}" }
        val bad = expectThrows<IllegalArgumentException>("garbage model") { NativePredictor.fromBytes(ByteArray(16)) }
        check(bad.message!!.contains("ONNX")) { "load: ${bad.message}" }
        val threads = expectThrows<IllegalArgumentException>("threads 0") { NativePredictor.fromBytes(fx.model, 0) }
        check(threads.message!!.contains("threads")) { "threads: ${threads.message}" }
        val missing = expectThrows<IllegalArgumentException>("missing file") { NativePredictor.fromPath("/nonexistent/m.onnx") }
        check(missing.message!!.contains("/nonexistent/m.onnx")) { "path: ${missing.message}" }
        val closed = NativePredictor.fromBytes(fx.model)
        closed.close(); closed.close()
        val st = expectThrows<IllegalStateException>("closed") { closed.predictInto(good, out) }
        check(st.message!!.contains("closed")) { "closed: ${st.message}" }
    }

    r.test("$stressTotal predictions from 4 threads (uniffi + JNI): right answers, bounded memory") {
        val threads = 4
        val perThread = stressTotal / threads
        val expectedBits = (0 until fx.count).map { bits(fx.logits(it)) }
        val runBits = (0 until fx.count).map { bits(fx.run(it)) }
        val inputs = (0 until fx.count).map { fx.inputBytes(it) }
        fun work(n: Int, errors: AtomicInteger, firstError: AtomicReference<String?>) {
            val inBuf = directFloatBuffer(fx.exampleLen)
            val outBuf = directFloatBuffer(fx.classes)
            val out = FloatArray(fx.classes)
            for (k in 0 until n) {
                val i = k % fx.count
                val ok = if (k % 2 == 0) {
                    bits(model.predictBytesBlocking(inputs[i]).logits) == expectedBits[i]
                } else {
                    inBuf.clear(); inBuf.put(inputs[i]); inBuf.flip(); outBuf.clear()
                    native.predictInto(inBuf, outBuf)
                    outBuf.asFloatBuffer().get(out)
                    bits(out) == runBits[i]
                }
                if (!ok) { errors.incrementAndGet(); firstError.compareAndSet(null, "prediction $k (digit $i) differs") }
            }
        }
        fun round(n: Int): Long {
            val errors = AtomicInteger()
            val firstError = AtomicReference<String?>(null)
            val t0 = System.nanoTime()
            val ts = (0 until threads).map { Thread { work(n, errors, firstError) }.apply { start() } }
            ts.forEach { it.join() }
            check(errors.get() == 0) { "${errors.get()} wrong results, first: ${firstError.get()}" }
            return System.nanoTime() - t0
        }
        round(2_000) // warm-up: JIT, heap growth, tract states per thread
        System.gc(); Thread.sleep(200)
        val before = rssKb()
        val ns = round(perThread)
        System.gc(); Thread.sleep(200)
        val after = rssKb()
        val growthMb = (after - before) / 1024.0
        println("      %d predictions in %.1f s (%.1f µs each, 4 threads); RSS %d → %d KiB (%+.1f MiB)".format(
            perThread * threads, ns / 1e9, ns / 1e3 / (perThread * threads) * threads, before, after, growthMb))
        // A leak of even one input copy (3 KiB) per call would add ~300 MiB here.
        check(growthMb < 48.0) { "RSS grew by %.1f MiB over ${perThread * threads} predictions".format(growthMb) }
    }

    native.close()
    model.close()
    println()
    println("${r.passed} passed, ${r.failed} failed")
    exitProcess(if (r.failed == 0) 0 else 1)
}
