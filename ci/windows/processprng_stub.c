/*
 * bcryptprimitives.dll stand-in for Wine < 9: exports ProcessPrng only.
 *
 * Rust's std (since 1.78) gets its randomness (HashMap seeds, etc.) from
 * bcryptprimitives.dll!ProcessPrng.  Wine 8.0 (Debian 12) ships no such DLL,
 * so every Rust .exe fails at load time: exit code 53 (0x35, "DLL not found"),
 * with nothing printed under WINEDEBUG=-all.  ci/windows/wine-runner.sh builds
 * this file with mingw-w64 and copies the result into the Wine prefix's
 * system32 directory.
 *
 * Real signature (documented by Microsoft):
 *     BOOL WINAPI ProcessPrng(PBYTE pbData, SIZE_T cbData);
 * It always returns TRUE.  Here the bytes come from RtlGenRandom
 * (advapi32!SystemFunction036), which Wine implements by reading the host's
 * random source.  Test use only: never ship this DLL.
 */
#include <windows.h>

/* RtlGenRandom is exported under this name; its length is a ULONG. */
__declspec(dllimport) BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x10000000u ? 0x10000000u : (ULONG)len;
        if (!SystemFunction036(data, chunk)) {
            /* The real ProcessPrng cannot fail; neither may we hand back
             * predictable bytes silently. */
            RaiseException(0xE0505247u /* 'PRG' */, EXCEPTION_NONCONTINUABLE, 0, NULL);
        }
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}

BOOL WINAPI DllMain(HINSTANCE inst, DWORD reason, LPVOID reserved)
{
    (void)inst;
    (void)reason;
    (void)reserved;
    return TRUE;
}
