/* Test-harness shim, never shipped: Wine 8.0 has no bcryptprimitives.dll,
 * but Rust's standard library (1.78+) imports ProcessPrng from it for
 * HashMap seeds and the like (rust-lang/rust#121337); without it the exe
 * exits with code 53 before main. This DLL, placed beside the exe in the
 * test's WINEPREFIX, forwards to RtlGenRandom (advapi32!SystemFunction036),
 * which Wine implements. Built by tests/windows_wine.rs with
 * x86_64-w64-mingw32-gcc -shared. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    /* RtlGenRandom takes a ULONG length: feed it in chunks. */
    while (len > 0) {
        ULONG n = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!SystemFunction036(data, n))
            return FALSE;
        data += n;
        len -= n;
    }
    return TRUE;
}
