// The pupil Android library: generated uniffi Kotlin (src/main/kotlin/dev/pupil/ffi), the hand-written API
// (dev.pupil.PupilModel, NativePredictor, Bitmap helpers) and the Rust library in src/main/jniLibs/<abi>/,
// built by ../build-rust.sh.
plugins {
    id("com.android.library")
    id("org.jetbrains.kotlin.android")
}

android {
    namespace = "dev.pupil"
    compileSdk = 35

    defaultConfig {
        minSdk = 24
        consumerProguardFiles("consumer-rules.pro")
        ndk {
            abiFilters += listOf("arm64-v8a", "armeabi-v7a", "x86_64")
        }
    }

    sourceSets["main"].jniLibs.srcDirs("src/main/jniLibs")

    packaging {
        // The .so files are already stripped by the `mobile` cargo profile.
        jniLibs.keepDebugSymbols += "**/libpupil_bindings.so"
        // 16 KB page sizes (Android 15+): store libraries uncompressed and page-aligned.
        jniLibs.useLegacyPackaging = false
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
}

kotlin {
    jvmToolchain(17)
}

dependencies {
    // uniffi's generated Kotlin calls the C ABI through JNA; the @aar variant carries JNA's own native libraries.
    implementation("net.java.dev.jna:jna:5.15.0@aar")
    implementation("org.jetbrains.kotlinx:kotlinx-coroutines-android:1.9.0")
    implementation("androidx.annotation:annotation:1.9.1")
}
