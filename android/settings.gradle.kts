// pupil for Android: the `pupil` library module (Kotlin API + JNI libs) and a `sample` app.
// UNTESTED HERE: no Android SDK/NDK on the machine that wrote this (see README.md).
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}
dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
    }
}
rootProject.name = "pupil-android"
include(":pupil", ":sample")
