# keel's native addon: tpm2-tss ESAPI (through the TCTI loader) and the few
# Linux syscalls Node lacks (peer credentials of a Unix socket).
# Build: npm run build:native  (node-gyp rebuild --directory native)
{
  "targets": [
    {
      "target_name": "keel_native",
      "sources": [
        "src/addon.cc",
        "src/device.cc",
        "src/tpm_session.cc",
        "src/ek_templates.cc",
        "src/failure.cc",
        "src/peercred.cc"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")"
      ],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": [
        "-std=c++17", "-fexceptions", "-Wall", "-Wextra", "-Wno-missing-field-initializers",
        "<!@(pkg-config --cflags tss2-esys tss2-sys tss2-tctildr tss2-mu tss2-rc)"
      ],
      "libraries": [
        "<!@(pkg-config --libs tss2-esys tss2-sys tss2-tctildr tss2-mu tss2-rc)"
      ]
    }
  ]
}
