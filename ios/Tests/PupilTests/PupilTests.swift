// Swift tests of the wrapper (run with `swift test` on macOS after build-xcframework.sh; untested here).
import XCTest
@testable import Pupil

final class PupilTests: XCTestCase {
    func testFloatBytesRoundTrip() {
        let values: [Float] = [0, -0.0, 1.5, -3.25e-7, .greatestFiniteMagnitude]
        let data = values.leData()
        XCTAssertEqual(data.count, 20)
        XCTAssertEqual(Array(data[8..<12]), [0x00, 0x00, 0xc0, 0x3f])
        XCTAssertEqual(data.leFloats().map(\.bitPattern), values.map(\.bitPattern))
    }

    func testNotOnnxThrowsTypedError() async {
        do {
            _ = try await PupilModel.load(data: Data("not a model".utf8))
            XCTFail("loading garbage must throw")
        } catch let PupilError.NotOnnx(message) {
            XCTAssertTrue(message.contains("not an ONNX model"), message)
        } catch {
            XCTFail("wrong error \(error)")
        }
    }
}
