// SPDX-License-Identifier: GPL-2.0-only
/*
 * Sample driver for the kernel-driver delivery pipeline.
 *
 * It does nothing but announce itself, so that a test reading the kernel log can prove which build
 * of the driver was loaded into which kernel: the driver version and kernel release it was compiled
 * for are baked in at build time, and the release of the kernel actually running is read at load.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/utsname.h>
#include <generated/utsrelease.h>

#ifndef EXAMPLE_DRIVER_VERSION
#error "EXAMPLE_DRIVER_VERSION is not set: build with make ... EXAMPLE_DRIVER_VERSION=v0.1.2"
#endif

/* The source commit, from make ... KDRIVER_SOURCE_COMMIT=<id> (driver-builder always passes it). */
#ifndef KDRIVER_SOURCE_COMMIT
#define KDRIVER_SOURCE_COMMIT "unknown"
#endif

static int __init example_driver_init(void)
{
	pr_info("loaded version=%s built_for=%s running=%s\n",
		EXAMPLE_DRIVER_VERSION, UTS_RELEASE, utsname()->release);
	return 0;
}

static void __exit example_driver_exit(void)
{
	pr_info("unloaded\n");
}

module_init(example_driver_init);
module_exit(example_driver_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Sample driver that logs its version and kernel release when loaded");
MODULE_AUTHOR("kernel-driver delivery project");
MODULE_VERSION(EXAMPLE_DRIVER_VERSION);
/* `modinfo -F scmversion`; MODULE_VERSION above also makes modpost record srcversion. */
MODULE_INFO(scmversion, KDRIVER_SOURCE_COMMIT);
