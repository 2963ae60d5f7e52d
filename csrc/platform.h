/*
 * The kernel the C core is built for.  Include this header first in every
 * .c file, before any system header, because _GNU_SOURCE must precede them.
 *
 * SANDBOX_LINUX is defined on Linux unless the build defines
 * SANDBOX_PORTABLE (build_ffi.py does when SANDBOX_PORTABLE_BUILD=1).
 * Every Linux-only header, system call and prctl sits inside
 * #ifdef SANDBOX_LINUX.  Without it the launcher skips the Linux stages
 * or fails them with ENOSYS, and ring waits fail with ENOSYS, so a
 * portable build on Linux compiles and behaves as on macOS.
 * _GNU_SOURCE is left out of such a build too, so that a glibc extension
 * used outside the guards is an implicit declaration, which
 * build_ffi.py makes an error.
 */
#ifndef SANDBOX_PLATFORM_H
#define SANDBOX_PLATFORM_H

#if defined(__linux__) && !defined(SANDBOX_PORTABLE)
#define SANDBOX_LINUX 1
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#endif

#endif
