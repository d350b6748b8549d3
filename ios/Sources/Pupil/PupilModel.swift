// The hand-written Swift API over the generated bindings: async throws calls, [Float] / Data / CGImage inputs.
import Foundation
#if canImport(CoreGraphics)
import CoreGraphics
#endif

/// One prediction, with the logits and probabilities unpacked into `[Float]`.
public struct PupilPrediction: Sendable {
    /// Index of the most probable class.
    public let classIndex: Int
    /// Its label, when the model has labels.
    public let label: String?
    /// Its probability.
    public let probability: Float
    /// The most probable classes, most probable first.
    public let top: [ClassScore]
    /// Raw model outputs.
    public let logits: [Float]
    /// Softmax of the logits.
    public let probabilities: [Float]

    init(_ r: PredictionResult) {
        classIndex = Int(r.classIndex)
        label = r.label
        probability = r.probability
        top = r.top
        logits = r.logits.leFloats()
        probabilities = r.probabilities.leFloats()
    }
}

extension Array where Element == Float {
    /// The values as little-endian f32 bytes (what `Predictor.predict` takes). Apple platforms are little-endian.
    public func leData() -> Data {
        withUnsafeBufferPointer { Data(buffer: $0) }
    }
}

extension Data {
    /// Little-endian f32 bytes as floats (copied: `Data` need not be aligned).
    public func leFloats() -> [Float] {
        let n = count / MemoryLayout<Float>.size
        return [Float](unsafeUninitializedCapacity: n) { buf, initialized in
            _ = copyBytes(to: buf)
            initialized = n
        }
    }
}

/// A loaded pupil model. Thread-safe; every call runs off the caller's actor and throws `PupilError`
/// (`.InputLength(message:)`, `.NotOnnx(message:)`, ...) whose message says what was expected.
public final class PupilModel: @unchecked Sendable {
    /// The generated uniffi object, for calls this wrapper does not cover.
    public let predictor: Predictor
    /// Values in one example.
    public let exampleLen: Int
    /// Number of classes.
    public let classes: Int
    /// Class labels, empty when the model has none.
    public let labels: [String]

    public init(predictor: Predictor) {
        self.predictor = predictor
        exampleLen = Int(predictor.exampleLen())
        classes = Int(predictor.classes())
        labels = predictor.labels()
    }

    /// Loads a model file (and `NAME.card.json` beside it).
    public static func load(contentsOf url: URL, options: PredictorOptions = PredictorOptions()) async throws -> PupilModel {
        try await Task.detached(priority: .userInitiated) {
            PupilModel(predictor: try Predictor.fromPath(path: url.path, options: options))
        }.value
    }

    /// Loads a model from memory (an asset).
    public static func load(data: Data, options: PredictorOptions = PredictorOptions()) async throws -> PupilModel {
        try await Task.detached(priority: .userInitiated) {
            PupilModel(predictor: try Predictor.fromBytes(model: data, options: options))
        }.value
    }

    private func detached<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await Task.detached(priority: .userInitiated, operation: body).value
    }

    /// Predicts one example of `exampleLen` floats.
    public func predict(_ input: [Float]) async throws -> PupilPrediction {
        let data = input.leData()
        return try await detached { PupilPrediction(try self.predictor.predict(input: data)) }
    }

    /// Predicts one example given as little-endian f32 bytes.
    public func predict(bytes: Data) async throws -> PupilPrediction {
        try await detached { PupilPrediction(try self.predictor.predict(input: bytes)) }
    }

    /// Decodes a PNG/JPEG, preprocesses it with the model's spec and predicts.
    public func predict(imageData: Data) async throws -> PupilPrediction {
        try await detached { PupilPrediction(try self.predictor.predictImage(image: imageData)) }
    }

    /// The `k` most probable classes.
    public func topK(_ input: [Float], k: Int) async throws -> [ClassScore] {
        let data = input.leData()
        return try await detached { try self.predictor.topK(input: data, k: UInt32(max(k, 0))) }
    }

    #if canImport(CoreGraphics)
    /// Predicts an image: rendered to RGBA8, then resized and normalised by the model's spec in Rust.
    public func predict(cgImage: CGImage) async throws -> PupilPrediction {
        let (pixels, w, h) = cgImage.rgbaBytes()
        return try await detached {
            PupilPrediction(try self.predictor.predictRgba(pixels: pixels, width: UInt32(w), height: UInt32(h)))
        }
    }
    #endif
}

#if canImport(CoreGraphics)
extension CGImage {
    /// The image drawn into an sRGB RGBA8 buffer, row-major, `width * height * 4` bytes.
    func rgbaBytes() -> (Data, Int, Int) {
        let w = width, h = height
        var bytes = Data(count: w * h * 4)
        bytes.withUnsafeMutableBytes { raw in
            let ctx = CGContext(
                data: raw.baseAddress, width: w, height: h, bitsPerComponent: 8, bytesPerRow: w * 4,
                space: CGColorSpace(name: CGColorSpace.sRGB)!,
                bitmapInfo: CGImageAlphaInfo.premultipliedLast.rawValue | CGBitmapInfo.byteOrder32Big.rawValue)
            ctx?.draw(self, in: CGRect(x: 0, y: 0, width: w, height: h))
        }
        return (bytes, w, h)
    }
}
#endif
