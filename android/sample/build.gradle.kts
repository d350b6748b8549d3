// Sample app: classifies a bundled digit image and runs the bundled parity bundle, showing both results.
// Assets (model, parity bundle) are copied into src/main/assets by ../build-rust.sh.
plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

android {
    namespace = "dev.pupil.sample"
    compileSdk = 35

    defaultConfig {
        applicationId = "dev.pupil.sample"
        minSdk = 24
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"
    }

    buildTypes {
        release {
            isMinifyEnabled = true
            proguardFiles(getDefaultProguardFile("proguard-android-optimize.txt"))
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }

    // Keep the model and the parity bundle uncompressed so they can be read without inflating.
    androidResources {
        noCompress += listOf("onnx", "bundle")
    }
}

kotlin {
    jvmToolchain(17)
}

dependencies {
    implementation(project(":pupil"))
    implementation("androidx.appcompat:appcompat:1.7.0")
    implementation("androidx.lifecycle:lifecycle-runtime-ktx:2.8.7")
}
