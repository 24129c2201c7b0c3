// SPDX-License-Identifier: GPL-2.0
/*
 * edu_dma - makes QEMU's emulated "edu" PCI device (1234:11e8) DMA into a
 * guest page, unmap it, and DMA again to the stale bus address: the
 * protection proof of the lab (docs/protection.md).
 *
 * edu has one DMA engine: source (BAR0 0x80), destination (0x88), count
 * (0x90), command (0x98: bit 0 start/busy, bit 1 set = device to RAM).
 * Its own buffer is 4 KiB at device address 0x40000, and a transfer runs
 * 100 ms (QEMU's virtual clock) after the command is written. A
 * device-side range that does not end strictly inside that buffer aborts
 * the emulator (QEMU 7.2), so every one is checked here before it is
 * programmed, and every bus address must fit the device's 28-bit DMA
 * mask. Transfers are 2 KiB.
 *
 * Interface: debugfs file edu_dma/cmd. Write a command, read its result
 * (key=value lines, also in dmesg):
 *   info             ident and liveness registers, BDF
 *   once             DMA a pattern in, unmap, DMA a second pattern to the
 *                    stale address: did it reach the page?
 *   late MS          once, with the stale DMA started MS ms after the
 *                    unmap (coop: after the host's unpin, docs/coop.md)
 *   never            DMA to the physical address of a page never mapped
 *                    for DMA (coop: IOVA = GPA, so the unpinned page)
 *   window N MAXMS   N tries: start a DMA, unmap MAXMS ms or less before
 *                    the device does it, see whether it still lands (the
 *                    lazy window, docs/protection.md)
 *
 * Part of iovmm (guest-kernel-patches/README.md tells how to build and load).
 */
#include <linux/debugfs.h>
#include <linux/delay.h>
#include <linux/dma-mapping.h>
#include <linux/io.h>
#include <linux/ktime.h>
#include <linux/math64.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/random.h>
#include <linux/slab.h>
#include <linux/sort.h>
#include <linux/uaccess.h>

#define ED_REG_IDENT 0x00
#define ED_REG_LIVE 0x04
#define ED_REG_SRC 0x80
#define ED_REG_DST 0x88
#define ED_REG_CNT 0x90
#define ED_REG_CMD 0x98
#define ED_CMD_RUN 0x1
/*
 * Direction bit: set = device buffer -> RAM (QEMU's edu.c, EDU_DMA_TO_PCI),
 * clear = RAM -> device buffer. Reversed, the RAM address would be checked
 * as a device address and abort the emulator.
 */
#define ED_CMD_TO_RAM 0x2
#define ED_BUF 0x40000ULL	/* the device's buffer (device address) */
#define ED_BUF_LEN 4096ULL
#define ED_DMA_BITS 28
/*
 * Bytes per transfer: QEMU 7.2's edu aborts (hw_error) unless the end of
 * the device-side range lies strictly inside its buffer, so a full 4 KiB
 * transfer at 0x40000 would kill the emulator: half a page is used.
 */
#define ED_XFER 2048U
#define ED_DMA_NS 100000000LL	/* edu runs a transfer 100 ms after the command */
#define ED_WAIT_NS (5LL * NSEC_PER_SEC)
#define ED_RESULT_MAX 4096
#define ED_MAX_TRIES 1000

struct ed_dev {
	struct pci_dev *pdev;
	void __iomem *bar;
	bool stuck;		/* a transfer never finished: no more commands */
};

static DEFINE_MUTEX(ed_lock);
static struct ed_dev *ed_the;
static struct dentry *ed_dir;
static char ed_result[ED_RESULT_MAX];
static size_t ed_result_len;

static __printf(1, 2) void ed_out(const char *fmt, ...)
{
	va_list ap;
	int n;

	if (ed_result_len >= sizeof(ed_result) - 1)
		return;
	va_start(ap, fmt);
	n = vscnprintf(ed_result + ed_result_len, sizeof(ed_result) - ed_result_len, fmt, ap);
	va_end(ap);
	ed_result_len += n;
}

/*
 * Programs one transfer after checking every address against the device's
 * limits (an out-of-range device address aborts QEMU's edu), and records
 * when the command was written. Returns 0 or -EINVAL.
 */
static int ed_start(struct ed_dev *d, bool to_dev, dma_addr_t ram, ktime_t *t)
{
	u64 dev = ED_BUF;

	if (d->stuck)
		return -EBUSY;
	if (ram >= (1ULL << ED_DMA_BITS) || ram + ED_XFER > (1ULL << ED_DMA_BITS))
		return -EINVAL;
	if (dev < ED_BUF || dev + ED_XFER >= ED_BUF + ED_BUF_LEN)
		return -EINVAL;
	if (readl(d->bar + ED_REG_CMD) & ED_CMD_RUN)
		return -EBUSY;
	/* 32-bit writes: the addresses fit, the upper halves become zero. */
	writel(to_dev ? (u32)ram : (u32)dev, d->bar + ED_REG_SRC);
	writel(to_dev ? (u32)dev : (u32)ram, d->bar + ED_REG_DST);
	writel(ED_XFER, d->bar + ED_REG_CNT);
	*t = ktime_get();
	writel(ED_CMD_RUN | (to_dev ? 0 : ED_CMD_TO_RAM), d->bar + ED_REG_CMD);
	return 0;
}

/*
 * Waits until the device clears the busy bit; returns the time it was
 * first seen clear, or 0 after ED_WAIT_NS (the device is then marked
 * stuck and its pages are never freed: it may still write them).
 */
static ktime_t ed_wait(struct ed_dev *d, ktime_t started)
{
	ktime_t now;

	s64 left;

	/* Asleep until 10 ms before the device's 100 ms, then polled. */
	left = ED_DMA_NS - 10 * NSEC_PER_MSEC - ktime_to_ns(ktime_sub(ktime_get(), started));
	if (left > 0)
		usleep_range(div_s64(left, NSEC_PER_USEC), div_s64(left, NSEC_PER_USEC) + 100);
	for (;;) {
		now = ktime_get();
		if (!(readl(d->bar + ED_REG_CMD) & ED_CMD_RUN))
			return now;
		if (ktime_to_ns(ktime_sub(now, started)) > ED_WAIT_NS) {
			d->stuck = true;
			return 0;
		}
		udelay(20);
	}
}

/* One complete transfer; 0, or a negative error. */
static int ed_xfer(struct ed_dev *d, bool to_dev, dma_addr_t ram)
{
	ktime_t t;
	int ret = ed_start(d, to_dev, ram, &t);

	if (ret)
		return ret;
	return ed_wait(d, t) ? 0 : -ETIMEDOUT;
}

/* How a page compares to patterns: all bytes @a, all @b, or other. */
static const char *ed_state(const u8 *p, u8 a, u8 b, const char *an, const char *bn)
{
	size_t i;
	bool all_a = true, all_b = true;

	for (i = 0; i < ED_XFER; i++) {
		all_a &= p[i] == a;
		all_b &= p[i] == b;
	}
	return all_a ? an : all_b ? bn : "partial";
}

/*
 * Loads the device's buffer with @byte: fills @src, maps it, DMA RAM ->
 * device, unmaps.
 */
static int ed_load(struct ed_dev *d, struct page *src, u8 byte)
{
	struct device *dev = &d->pdev->dev;
	dma_addr_t a;
	int ret;

	memset(page_address(src), byte, ED_XFER);
	a = dma_map_page(dev, src, 0, ED_XFER, DMA_TO_DEVICE);
	if (dma_mapping_error(dev, a))
		return -ENOMEM;
	ret = ed_xfer(d, true, a);
	if (!d->stuck)
		dma_unmap_page(dev, a, ED_XFER, DMA_TO_DEVICE);
	return ret;
}

/*
 * Pages for the transfers, below 16 MiB (ZONE_DMA): with no IOMMU (or an
 * identity domain) the bus address is the physical one and must fit the
 * device's 28-bit mask without a bounce buffer.
 */
static struct page *ed_page(void)
{
	return alloc_page(GFP_KERNEL | GFP_DMA | __GFP_ZERO);
}

static int ed_cmd_info(struct ed_dev *d)
{
	u32 ident, live;

	ident = readl(d->bar + ED_REG_IDENT);
	writel(0x12345678, d->bar + ED_REG_LIVE);
	live = readl(d->bar + ED_REG_LIVE);
	ed_out("info bdf=%s ident=0x%08x live=%d stuck=%d\n", pci_name(d->pdev), ident,
	       live == ~0x12345678U, d->stuck);
	return 0;
}

/*
 * once: A (0x5a) into the device, DMA device -> page (must land), the
 * device loaded with B (0xa5) while the page is still mapped, the page
 * unmapped, and the same transfer again to the stale address. The second
 * DMA runs ~100 ms after the unmap returned, or @delay_ms + 100 ms
 * (late). @name prefixes the result line.
 */
static int ed_cmd_once(struct ed_dev *d, const char *name, unsigned int delay_ms)
{
	struct device *dev = &d->pdev->dev;
	struct page *src, *dst;
	const char *first, *second;
	dma_addr_t a;
	ktime_t tu, ts, td;
	u64 unmap_ns;
	int ret;

	src = ed_page();
	dst = ed_page();
	if (!src || !dst) {
		ret = -ENOMEM;
		goto out_free;
	}
	memset(page_address(dst), 0xee, ED_XFER);
	ret = ed_load(d, src, 0x5a);
	if (ret)
		goto out;
	a = dma_map_page(dev, dst, 0, ED_XFER, DMA_FROM_DEVICE);
	if (dma_mapping_error(dev, a)) {
		ret = -ENOMEM;
		goto out;
	}
	ret = ed_xfer(d, false, a);
	if (ret)
		goto out;	/* stuck: the page stays mapped and allocated */
	dma_sync_single_for_cpu(dev, a, ED_XFER, DMA_FROM_DEVICE);
	first = ed_state(page_address(dst), 0x5a, 0xee, "landed", "missed");
	ret = ed_load(d, src, 0xa5);
	if (ret)
		goto out;
	tu = ktime_get();
	dma_unmap_page(dev, a, ED_XFER, DMA_FROM_DEVICE);
	unmap_ns = ktime_to_ns(ktime_sub(ktime_get(), tu));
	if (delay_ms)
		msleep(delay_ms);
	ret = ed_start(d, false, a, &ts);
	if (ret)
		goto out;
	td = ed_wait(d, ts);
	if (!td) {
		ret = -ETIMEDOUT;
		goto out;
	}
	/* After the transfer: the CPU reads what is in memory now. */
	second = ed_state(page_address(dst), 0xa5, 0x5a, "landed", "unchanged");
	ed_out("%s first=%s second=%s iova=0x%llx unmap_ns=%llu dma_after_unmap_ms=%lld\n",
	       name, first, second, (u64)a, unmap_ns,
	       div_s64(ktime_to_ns(ktime_sub(td, tu)), NSEC_PER_MSEC));
out:
	if (ret)
		ed_out("%s error=%d stuck=%d\n", name, ret, d->stuck);
	if (d->stuck)
		return ret;	/* the device may still write them: never freed */
out_free:
	if (src)
		__free_page(src);
	if (dst)
		__free_page(dst);
	return ret;
}

/*
 * never: the device loaded with A (0x5a), then told to write it to the
 * physical address of a fresh page that was never DMA-mapped. Under an
 * IOMMU that page is not reachable (a fault); without one, or in coop
 * mode while it is pinned, it lands.
 */
static int ed_cmd_never(struct ed_dev *d)
{
	struct page *src, *dst;
	ktime_t ts;
	int ret;

	src = ed_page();
	dst = ed_page();
	if (!src || !dst) {
		ret = -ENOMEM;
		goto out_free;
	}
	memset(page_address(dst), 0xee, ED_XFER);
	ret = ed_load(d, src, 0x5a);
	if (!ret)
		ret = ed_start(d, false, page_to_phys(dst), &ts);
	if (!ret && !ed_wait(d, ts))
		ret = -ETIMEDOUT;
	if (ret) {
		ed_out("never error=%d stuck=%d\n", ret, d->stuck);
		if (d->stuck)
			return ret;	/* the device may still write them */
		goto out_free;
	}
	ed_out("never result=%s addr=0x%llx\n",
	       ed_state(page_address(dst), 0x5a, 0xee, "landed", "unchanged"),
	       (u64)page_to_phys(dst));
out_free:
	if (src)
		__free_page(src);
	if (dst)
		__free_page(dst);
	return ret;
}

/* ns to us; -1 (none) stays -1. */
static s64 ed_us(s64 ns)
{
	return ns < 0 ? -1 : div_s64(ns, NSEC_PER_USEC);
}

static int ed_cmp_s64(const void *a, const void *b)
{
	s64 x = *(const s64 *)a, y = *(const s64 *)b;

	return x < y ? -1 : x > y;
}

static s64 ed_pct(const s64 *v, unsigned int n, unsigned int pct)
{
	return n ? v[min_t(unsigned int, n - 1, (n * pct) / 100)] : -1;
}

/*
 * window N MAXMS: per try, the device loaded with 0xa5 once, a fresh page
 * (0xee) mapped, the device -> page transfer started, the page unmapped
 * o ms before the transfer runs (o random in [0, MAXMS]), the end
 * awaited: d = (transfer seen done) - (unmap returned). A transfer still
 * running when the unmap returned and that lands ran after the unmap
 * (one already done then counts as before_unmap). Reports how many landed and
 * missed, the distribution of d over the landed ones (each a lower bound
 * of that try's window), and the smallest d that missed.
 */
static int ed_cmd_window(struct ed_dev *d, unsigned int n, unsigned int maxms)
{
	struct device *dev = &d->pdev->dev;
	struct page *src, *dst = NULL;
	unsigned int i, landed = 0, missed = 0, before = 0, partial = 0;
	s64 *lat, miss_min = -1, miss_max = -1;
	ktime_t ts, tu, td;
	dma_addr_t a;
	const char *st;
	bool early;
	s64 dns;
	int ret = 0;

	if (!n || n > ED_MAX_TRIES || maxms > 90)
		return -EINVAL;
	lat = kcalloc(n, sizeof(*lat), GFP_KERNEL);
	src = ed_page();
	if (!lat || !src) {
		ret = -ENOMEM;
		goto out;
	}
	ret = ed_load(d, src, 0xa5);
	if (ret)
		goto out;
	for (i = 0; i < n; i++) {
		u64 o_us = get_random_u32_below(maxms * 1000 + 1);
		u64 wait_us = ED_DMA_NS / NSEC_PER_USEC - o_us;

		dst = ed_page();
		if (!dst) {
			ret = -ENOMEM;
			break;
		}
		memset(page_address(dst), 0xee, ED_XFER);
		a = dma_map_page(dev, dst, 0, ED_XFER, DMA_FROM_DEVICE);
		if (dma_mapping_error(dev, a)) {
			ret = -ENOMEM;
			break;
		}
		ret = ed_start(d, false, a, &ts);
		if (ret) {
			dma_unmap_page(dev, a, ED_XFER, DMA_FROM_DEVICE);
			break;
		}
		usleep_range(wait_us, wait_us + 50);
		dma_unmap_page(dev, a, ED_XFER, DMA_FROM_DEVICE);
		tu = ktime_get();
		/* Already done: it ran before the unmap returned. */
		early = !(readl(d->bar + ED_REG_CMD) & ED_CMD_RUN);
		td = ed_wait(d, ts);
		if (!td) {
			ret = -ETIMEDOUT;
			dst = NULL;	/* the device may still write it */
			break;
		}
		dns = ktime_to_ns(ktime_sub(td, tu));
		st = ed_state(page_address(dst), 0xa5, 0xee, "landed", "missed");
		if (early || dns <= 0) {
			before++;
		} else if (!strcmp(st, "landed")) {
			lat[landed++] = dns;
		} else if (!strcmp(st, "missed")) {
			missed++;
			if (miss_min < 0 || dns < miss_min)
				miss_min = dns;
			if (dns > miss_max)
				miss_max = dns;
		} else {
			partial++;
		}
		__free_page(dst);
		dst = NULL;
	}
	sort(lat, landed, sizeof(*lat), ed_cmp_s64, NULL);
	ed_out("window tries=%u maxms=%u landed=%u missed=%u before_unmap=%u partial=%u "
	       "landed_min_us=%lld landed_p50_us=%lld landed_p99_us=%lld landed_max_us=%lld "
	       "missed_min_us=%lld missed_max_us=%lld error=%d\n",
	       i, maxms, landed, missed, before, partial,
	       ed_us(ed_pct(lat, landed, 0)), ed_us(ed_pct(lat, landed, 50)),
	       ed_us(ed_pct(lat, landed, 99)), ed_us(landed ? lat[landed - 1] : -1),
	       ed_us(miss_min), ed_us(miss_max), ret);
out:
	kfree(lat);
	if (dst)
		__free_page(dst);
	if (src && !d->stuck)
		__free_page(src);
	return ret;
}

static ssize_t ed_cmd_write(struct file *f, const char __user *ubuf, size_t len, loff_t *pos)
{
	unsigned int a, b;
	char buf[64];
	struct ed_dev *d;
	int ret;

	if (len >= sizeof(buf))
		return -EINVAL;
	if (copy_from_user(buf, ubuf, len))
		return -EFAULT;
	buf[len] = 0;
	strim(buf);

	mutex_lock(&ed_lock);
	ed_result_len = 0;
	ed_result[0] = 0;
	d = ed_the;
	if (!d) {
		ret = -ENODEV;
	} else if (d->stuck) {
		ed_out("error=stuck\n");
		ret = -EBUSY;
	} else if (!strcmp(buf, "info")) {
		ret = ed_cmd_info(d);
	} else if (!strcmp(buf, "once")) {
		ret = ed_cmd_once(d, "once", 0);
	} else if (sscanf(buf, "late %u", &a) == 1 && a <= 60000) {
		ret = ed_cmd_once(d, "late", a);
	} else if (!strcmp(buf, "never")) {
		ret = ed_cmd_never(d);
	} else if (sscanf(buf, "window %u %u", &a, &b) == 2) {
		ret = ed_cmd_window(d, a, b);
	} else {
		ret = -EINVAL;
	}
	if (ed_result_len)
		pr_info("edu_dma: %s", ed_result);
	mutex_unlock(&ed_lock);
	return ret < 0 && !ed_result_len ? ret : len;
}

static ssize_t ed_cmd_read(struct file *f, char __user *ubuf, size_t len, loff_t *pos)
{
	ssize_t ret;

	mutex_lock(&ed_lock);
	ret = simple_read_from_buffer(ubuf, len, pos, ed_result, ed_result_len);
	mutex_unlock(&ed_lock);
	return ret;
}

static const struct file_operations ed_cmd_fops = {
	.owner = THIS_MODULE,
	.write = ed_cmd_write,
	.read = ed_cmd_read,
	.llseek = default_llseek,
};

static int ed_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct ed_dev *d;
	int ret;

	if (ed_the)
		return -EBUSY;	/* one device is enough */
	ret = pcim_enable_device(pdev);
	if (ret)
		return ret;
	ret = dma_set_mask_and_coherent(&pdev->dev, DMA_BIT_MASK(ED_DMA_BITS));
	if (ret)
		return ret;
	ret = pcim_iomap_regions(pdev, BIT(0), "edu_dma");
	if (ret)
		return ret;
	pci_set_master(pdev);
	d = devm_kzalloc(&pdev->dev, sizeof(*d), GFP_KERNEL);
	if (!d)
		return -ENOMEM;
	d->pdev = pdev;
	d->bar = pcim_iomap_table(pdev)[0];
	pci_set_drvdata(pdev, d);
	mutex_lock(&ed_lock);
	ed_the = d;
	mutex_unlock(&ed_lock);
	dev_info(&pdev->dev, "edu_dma: bound\n");
	return 0;
}

static void ed_remove(struct pci_dev *pdev)
{
	mutex_lock(&ed_lock);
	if (ed_the == pci_get_drvdata(pdev))
		ed_the = NULL;
	mutex_unlock(&ed_lock);
}

static const struct pci_device_id ed_ids[] = {
	{ PCI_DEVICE(0x1234, 0x11e8) },
	{ }
};
MODULE_DEVICE_TABLE(pci, ed_ids);

static struct pci_driver ed_driver = {
	.name = "edu_dma",
	.id_table = ed_ids,
	.probe = ed_probe,
	.remove = ed_remove,
};

static int __init ed_init(void)
{
	int ret;

	ed_dir = debugfs_create_dir("edu_dma", NULL);
	debugfs_create_file("cmd", 0600, ed_dir, NULL, &ed_cmd_fops);
	ret = pci_register_driver(&ed_driver);
	if (ret)
		debugfs_remove_recursive(ed_dir);
	return ret;
}

static void __exit ed_exit(void)
{
	pci_unregister_driver(&ed_driver);
	debugfs_remove_recursive(ed_dir);
}

module_init(ed_init);
module_exit(ed_exit);
MODULE_DESCRIPTION("iovmm lab: DMA after unmap with QEMU's edu device");
MODULE_LICENSE("GPL");
