// NVRTC for the emulated device: the kernels were compiled for the host when niclip was built,
// so "compiling" `<family>.cu` yields a marker naming the family, which the emulated driver's
// cuModuleLoadData maps to that family's host kernels. Built as libnvrtc.so.
#include <cstring>
#include <string>

using Result = int;  // nvrtcResult
enum : int { OK = 0, INVALID_INPUT = 3, INVALID_PROGRAM = 4 };

namespace {
struct Program {
    std::string ptx;
};
}  // namespace

#define EXPORT extern "C" __attribute__((visibility("default")))

EXPORT Result nvrtcCreateProgram(void** prog, const char*, const char* name, int, const char* const*,
                                 const char* const*) {
    if (!name) return INVALID_INPUT;
    std::string family(name);
    if (family.size() > 3 && family.compare(family.size() - 3, 3, ".cu") == 0) family.resize(family.size() - 3);
    *prog = new Program{"// niclip CUDA emulator module: " + family + "\n"};
    return OK;
}
EXPORT Result nvrtcCompileProgram(void* prog, int, const char* const*) { return prog ? OK : INVALID_PROGRAM; }
EXPORT Result nvrtcGetPTXSize(void* prog, size_t* n) {
    *n = static_cast<Program*>(prog)->ptx.size() + 1;
    return OK;
}
EXPORT Result nvrtcGetPTX(void* prog, char* out) {
    const std::string& p = static_cast<Program*>(prog)->ptx;
    memcpy(out, p.c_str(), p.size() + 1);
    return OK;
}
EXPORT Result nvrtcGetProgramLogSize(void*, size_t* n) {
    *n = 1;
    return OK;
}
EXPORT Result nvrtcGetProgramLog(void*, char* out) {
    *out = 0;
    return OK;
}
EXPORT Result nvrtcDestroyProgram(void** prog) {
    delete static_cast<Program*>(*prog);
    *prog = nullptr;
    return OK;
}
