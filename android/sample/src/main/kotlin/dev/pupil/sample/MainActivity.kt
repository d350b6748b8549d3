// Sample: classify the bundled digit with PupilModel, then verify the bundled parity bundle on this device.
package dev.pupil.sample

import android.graphics.BitmapFactory
import android.os.Bundle
import android.widget.ImageView
import android.widget.TextView
import androidx.appcompat.app.AppCompatActivity
import androidx.lifecycle.lifecycleScope
import dev.pupil.PupilModel
import dev.pupil.ffi.PupilException
import dev.pupil.predict
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext

class MainActivity : AppCompatActivity() {
    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        val digitView = findViewById<ImageView>(R.id.digit)
        val predictionView = findViewById<TextView>(R.id.prediction)
        val parityView = findViewById<TextView>(R.id.parity)

        val bitmap = assets.open("digit.png").use { BitmapFactory.decodeStream(it) }
        digitView.setImageBitmap(bitmap)

        lifecycleScope.launch {
            try {
                val modelBytes = withContext(Dispatchers.IO) { assets.open("model.onnx").use { it.readBytes() } }
                PupilModel.fromBytes(modelBytes).use { model ->
                    val p = model.predict(bitmap)
                    predictionView.text = "class ${p.classIndex} ${p.label ?: ""}  (p = %.3f)".format(p.probability)

                    val bundle = withContext(Dispatchers.IO) { assets.open("parity.bundle").use { it.readBytes() } }
                    val report = withContext(Dispatchers.Default) { model.raw.verifyBundle(bundle) }
                    parityView.text = report.summary
                }
            } catch (e: PupilException) {
                predictionView.text = "pupil error: ${e.message}"
            }
        }
    }
}
