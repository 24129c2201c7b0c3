// SPDX-License-Identifier: GPL-2.0
/*
 * vblk_dma - makes an emulated virtio-blk device (the VMM's own, behind
 * its virtio-iommu) DMA into a guest page, unmaps the page, and reads
 * into the stale bus address again: the emulated half of the lab's
 * protection proof (docs/protection.md).
 *
 * It binds to the virtio-blk device in place of virtio_blk (which must not
 * be loaded), sets up its one request queue polled (no callback), and puts
 * the queue in premapped mode: the driver gives bus addresses itself, so a
 * request can name an IOVA the driver already unmapped. Without
 * VIRTIO_F_ACCESS_PLATFORM (no IOMMU) bus addresses are physical and
 * "unmap" changes nothing.
 *
 * Interface: debugfs file vblk_dma/cmd. Write a command, read its result:
 *   once B           read sector 0 into a mapped page (all bytes must be
 *                    B), unmap the page, read again into the stale address
 *   window N MS      N tries: map, read, unmap, then read into the stale
 *                    address again and again until a read fails or MS ms
 *                    pass: how long after the unmap reads still land
 *
 * Part of iovmm (guest-kernel-patches/README.md tells how to build and load).
 */
#include <linux/debugfs.h>
#include <linux/delay.h>
#include <linux/dma-mapping.h>
#include <linux/ktime.h>
#include <linux/math64.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/scatterlist.h>
#include <linux/slab.h>
#include <linux/sort.h>
#include <linux/uaccess.h>
#include <linux/virtio.h>
#include <linux/virtio_blk.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ids.h>
#include <linux/virtio_ring.h>

#define VB_LEN 4096U
#define VB_UNWRITTEN 0xff
#define VB_REQ_TIMEOUT_NS (5LL * NSEC_PER_SEC)
#define VB_RESULT_MAX 4096
#define VB_MAX_TRIES 1000
#define VB_FILL 0xee

static bool indirect;
module_param(indirect, bool, 0444);
MODULE_PARM_DESC(indirect, "use indirect descriptors (each request then maps its table; default off)");

/* What the device reads (header) and writes (status): kept mapped. */
struct vb_req {
	struct virtio_blk_outhdr hdr;
	u8 status;
};

struct vb_dev {
	struct virtio_device *vdev;
	struct virtqueue *vq;
	struct device *dma;	/* NULL: no DMA API (no IOMMU), physical addresses */
	struct vb_req *req;
	dma_addr_t hdr_a, st_a;
	bool stuck;		/* a request never completed: no more commands */
};

static DEFINE_MUTEX(vb_lock);
static struct vb_dev *vb_the;
static struct dentry *vb_dir;
static char vb_result[VB_RESULT_MAX];
static size_t vb_result_len;

static __printf(1, 2) void vb_out(const char *fmt, ...)
{
	va_list ap;
	int n;

	if (vb_result_len >= sizeof(vb_result) - 1)
		return;
	va_start(ap, fmt);
	n = vscnprintf(vb_result + vb_result_len, sizeof(vb_result) - vb_result_len, fmt, ap);
	va_end(ap);
	vb_result_len += n;
}

static void vb_sg(struct scatterlist *sg, void *buf, dma_addr_t a, unsigned int len, bool pre)
{
	sg_init_one(sg, buf, len);
	if (pre) {
		sg_dma_address(sg) = a;
		sg_dma_len(sg) = len;
	}
}

/*
 * One read of sector 0 into bus address @data (the page @page when there
 * is no DMA API): returns the status byte the device wrote (VB_UNWRITTEN
 * if none), or a negative error; a request that never completes marks the
 * device stuck.
 */
static int vb_read(struct vb_dev *d, struct page *page, dma_addr_t data)
{
	struct scatterlist hdr, buf, st, *sgs[3] = { &hdr, &buf, &st };
	bool pre = d->dma != NULL;
	unsigned int len;
	ktime_t t0;
	int ret;

	d->req->hdr.type = cpu_to_le32(VIRTIO_BLK_T_IN);
	d->req->hdr.ioprio = 0;
	d->req->hdr.sector = 0;
	d->req->status = VB_UNWRITTEN;
	if (pre)
		dma_sync_single_for_device(d->dma, d->hdr_a, sizeof(*d->req), DMA_BIDIRECTIONAL);
	vb_sg(&hdr, &d->req->hdr, d->hdr_a, sizeof(d->req->hdr), pre);
	vb_sg(&buf, page_address(page), data, VB_LEN, pre);
	vb_sg(&st, &d->req->status, d->st_a, 1, pre);
	ret = virtqueue_add_sgs(d->vq, sgs, 1, 2, d, GFP_KERNEL);
	if (ret)
		return ret;
	virtqueue_kick(d->vq);
	t0 = ktime_get();
	while (!virtqueue_get_buf(d->vq, &len)) {
		if (ktime_to_ns(ktime_sub(ktime_get(), t0)) > VB_REQ_TIMEOUT_NS) {
			d->stuck = true;
			return -ETIMEDOUT;
		}
		udelay(10);
	}
	if (pre)
		dma_sync_single_for_cpu(d->dma, d->hdr_a, sizeof(*d->req), DMA_BIDIRECTIONAL);
	return d->req->status;
}

static const char *vb_status(int s)
{
	switch (s) {
	case VIRTIO_BLK_S_OK: return "ok";
	case VIRTIO_BLK_S_IOERR: return "ioerr";
	case VIRTIO_BLK_S_UNSUPP: return "unsupp";
	case VB_UNWRITTEN: return "unwritten";
	default: return s < 0 ? "error" : "other";
	}
}

static const char *vb_state(const u8 *p, u8 want)
{
	size_t i;
	bool all_w = true, all_f = true;

	for (i = 0; i < VB_LEN; i++) {
		all_w &= p[i] == want;
		all_f &= p[i] == VB_FILL;
	}
	return all_w ? "landed" : all_f ? "unchanged" : "partial";
}

/* The page's bus address: mapped (DMA API) or physical. */
static dma_addr_t vb_map(struct vb_dev *d, struct page *page)
{
	return d->dma ? dma_map_page(d->dma, page, 0, VB_LEN, DMA_FROM_DEVICE) : page_to_phys(page);
}

static bool vb_map_failed(struct vb_dev *d, dma_addr_t a)
{
	return d->dma && dma_mapping_error(d->dma, a);
}

static void vb_unmap(struct vb_dev *d, dma_addr_t a)
{
	if (d->dma)
		dma_unmap_page(d->dma, a, VB_LEN, DMA_FROM_DEVICE);
}

static int vb_cmd_once(struct vb_dev *d, u8 want)
{
	struct page *page = alloc_page(GFP_KERNEL);
	const char *first, *second;
	int s1, s2;
	dma_addr_t a;

	if (!page)
		return -ENOMEM;
	memset(page_address(page), VB_FILL, VB_LEN);
	a = vb_map(d, page);
	if (vb_map_failed(d, a)) {
		__free_page(page);
		return -ENOMEM;
	}
	s1 = vb_read(d, page, a);
	if (d->stuck)
		goto stuck;
	if (d->dma)
		dma_sync_single_for_cpu(d->dma, a, VB_LEN, DMA_FROM_DEVICE);
	first = vb_state(page_address(page), want);
	vb_unmap(d, a);
	memset(page_address(page), VB_FILL, VB_LEN);
	s2 = vb_read(d, page, a);
	if (d->stuck)
		goto stuck;
	second = vb_state(page_address(page), want);
	vb_out("once dma_api=%d indirect=%d iova=0x%llx first=%s first_status=%s second=%s second_status=%s\n",
	       d->dma != NULL, indirect, (u64)a,
	       first, vb_status(s1), second, vb_status(s2));
	__free_page(page);
	return 0;
stuck:
	/* The device still holds the request: the page is never freed. */
	vb_out("once error=timeout stuck=1\n");
	return -ETIMEDOUT;
}

/* ns to us; -1 (none) stays -1. */
static s64 vb_us(s64 ns)
{
	return ns < 0 ? -1 : div_s64(ns, NSEC_PER_USEC);
}

static int vb_cmp_s64(const void *a, const void *b)
{
	s64 x = *(const s64 *)a, y = *(const s64 *)b;

	return x < y ? -1 : x > y;
}

static s64 vb_pct(const s64 *v, unsigned int n, unsigned int pct)
{
	return n ? v[min_t(unsigned int, n - 1, (n * pct) / 100)] : -1;
}

/*
 * window N MS: per try, a page mapped and read into (it must land), then
 * unmapped at t_u, then refilled and read into again until a read does
 * not land or MS ms pass. The window of the try is the time from t_u to
 * the completion of the last read that landed (0 if the first one after
 * the unmap already failed); a try that never stops landing within MS
 * counts as open. Reports the distribution over the tries.
 */
static int vb_cmd_window(struct vb_dev *d, unsigned int n, unsigned int ms, u8 want)
{
	unsigned int i, closed = 0, open = 0, zero = 0, reads = 0;
	struct page *page = NULL;
	s64 *win, bound = (s64)ms * NSEC_PER_MSEC;
	ktime_t tu, now, last;
	dma_addr_t a;
	int s, ret = 0;

	if (!n || n > VB_MAX_TRIES || !ms || ms > 10000)
		return -EINVAL;
	win = kcalloc(n, sizeof(*win), GFP_KERNEL);
	if (!win)
		return -ENOMEM;
	for (i = 0; i < n; i++) {
		page = alloc_page(GFP_KERNEL);
		if (!page) {
			ret = -ENOMEM;
			break;
		}
		memset(page_address(page), VB_FILL, VB_LEN);
		a = vb_map(d, page);
		if (vb_map_failed(d, a)) {
			ret = -ENOMEM;
			break;
		}
		s = vb_read(d, page, a);
		if (d->stuck || s != VIRTIO_BLK_S_OK) {
			ret = d->stuck ? -ETIMEDOUT : -EIO;
			break;
		}
		vb_unmap(d, a);
		tu = ktime_get();
		last = tu;
		for (;;) {
			memset(page_address(page), VB_FILL, VB_LEN);
			s = vb_read(d, page, a);
			now = ktime_get();
			reads++;
			if (d->stuck) {
				ret = -ETIMEDOUT;
				break;
			}
			if (strcmp(vb_state(page_address(page), want), "unchanged")) {
				last = now;	/* landed (or partly) after the unmap */
			} else {
				closed++;
				break;
			}
			if (ktime_to_ns(ktime_sub(now, tu)) > bound) {
				open++;
				break;
			}
		}
		if (d->stuck) {
			page = NULL;	/* still with the device */
			break;
		}
		win[i] = ktime_to_ns(ktime_sub(last, tu));
		if (!win[i])
			zero++;
		__free_page(page);
		page = NULL;
	}
	sort(win, i, sizeof(*win), vb_cmp_s64, NULL);
	vb_out("window tries=%u bound_ms=%u closed=%u open=%u no_dma_after_unmap=%u reads=%u "
	       "min_us=%lld p50_us=%lld p99_us=%lld max_us=%lld error=%d\n",
	       i, ms, closed, open, zero, reads, vb_us(vb_pct(win, i, 0)),
	       vb_us(vb_pct(win, i, 50)), vb_us(vb_pct(win, i, 99)),
	       vb_us(i ? win[i - 1] : -1), ret);
	if (page)
		__free_page(page);
	kfree(win);
	return ret;
}

static ssize_t vb_cmd_write(struct file *f, const char __user *ubuf, size_t len, loff_t *pos)
{
	unsigned int a, b, c;
	char buf[64];
	struct vb_dev *d;
	int ret;

	if (len >= sizeof(buf))
		return -EINVAL;
	if (copy_from_user(buf, ubuf, len))
		return -EFAULT;
	buf[len] = 0;
	strim(buf);

	mutex_lock(&vb_lock);
	vb_result_len = 0;
	vb_result[0] = 0;
	d = vb_the;
	if (!d) {
		ret = -ENODEV;
	} else if (d->stuck) {
		vb_out("error=stuck\n");
		ret = -EBUSY;
	} else if (sscanf(buf, "once %u", &a) == 1 && a < 256) {
		ret = vb_cmd_once(d, a);
	} else if (sscanf(buf, "window %u %u %u", &a, &b, &c) == 3 && c < 256) {
		ret = vb_cmd_window(d, a, b, c);
	} else {
		ret = -EINVAL;
	}
	if (vb_result_len)
		pr_info("vblk_dma: %s", vb_result);
	mutex_unlock(&vb_lock);
	return ret < 0 && !vb_result_len ? ret : len;
}

static ssize_t vb_cmd_read(struct file *f, char __user *ubuf, size_t len, loff_t *pos)
{
	ssize_t ret;

	mutex_lock(&vb_lock);
	ret = simple_read_from_buffer(ubuf, len, pos, vb_result, vb_result_len);
	mutex_unlock(&vb_lock);
	return ret;
}

static const struct file_operations vb_cmd_fops = {
	.owner = THIS_MODULE,
	.write = vb_cmd_write,
	.read = vb_cmd_read,
	.llseek = default_llseek,
};

static int vb_probe(struct virtio_device *vdev)
{
	struct vb_dev *d;
	int ret;

	if (vb_the)
		return -EBUSY;
	d = kzalloc(sizeof(*d), GFP_KERNEL);
	if (!d)
		return -ENOMEM;
	d->req = kzalloc(sizeof(*d->req), GFP_KERNEL);
	if (!d->req) {
		ret = -ENOMEM;
		goto err_free;
	}
	d->vdev = vdev;
	/*
	 * No indirect descriptors: the ring would map each request's indirect
	 * table, and under lazy that MAP makes the virtio-iommu driver send
	 * the UNMAPs it queued (one request queue, served in order), closing
	 * the window before the stale read. A negotiated INDIRECT_DESC only
	 * allows the driver to use it; the ring is built without it.
	 */
	if (!indirect)
		__virtio_clear_bit(vdev, VIRTIO_RING_F_INDIRECT_DESC);
	d->vq = virtio_find_single_vq(vdev, NULL, "vblk_dma");
	if (IS_ERR(d->vq)) {
		ret = PTR_ERR(d->vq);
		goto err_free;
	}
	d->dma = virtqueue_dma_dev(d->vq);
	if (d->dma) {
		ret = virtqueue_set_dma_premapped(d->vq);
		if (ret)
			goto err_vqs;
		/* One mapping for header and status: both stay mapped. */
		d->hdr_a = dma_map_single(d->dma, d->req, sizeof(*d->req), DMA_BIDIRECTIONAL);
		if (dma_mapping_error(d->dma, d->hdr_a)) {
			ret = -ENOMEM;
			goto err_vqs;
		}
		d->st_a = d->hdr_a + offsetof(struct vb_req, status);
	}
	vdev->priv = d;
	virtio_device_ready(vdev);
	mutex_lock(&vb_lock);
	vb_the = d;
	mutex_unlock(&vb_lock);
	dev_info(&vdev->dev, "vblk_dma: bound (dma_api=%d)\n", d->dma != NULL);
	return 0;
err_vqs:
	vdev->config->del_vqs(vdev);
err_free:
	kfree(d->req);
	kfree(d);
	return ret;
}

static void vb_remove(struct virtio_device *vdev)
{
	struct vb_dev *d = vdev->priv;

	mutex_lock(&vb_lock);
	if (vb_the == d)
		vb_the = NULL;
	mutex_unlock(&vb_lock);
	virtio_reset_device(vdev);
	vdev->config->del_vqs(vdev);
	if (d->dma)
		dma_unmap_single(d->dma, d->hdr_a, sizeof(*d->req), DMA_BIDIRECTIONAL);
	/* A stuck device was reset above: nothing holds the buffers now. */
	kfree(d->req);
	kfree(d);
}

static const struct virtio_device_id vb_ids[] = {
	{ VIRTIO_ID_BLOCK, VIRTIO_DEV_ANY_ID },
	{ 0 },
};

static struct virtio_driver vb_driver = {
	.driver.name = "vblk_dma",
	.id_table = vb_ids,
	.probe = vb_probe,
	.remove = vb_remove,
};

static int __init vb_init(void)
{
	int ret;

	vb_dir = debugfs_create_dir("vblk_dma", NULL);
	debugfs_create_file("cmd", 0600, vb_dir, NULL, &vb_cmd_fops);
	ret = register_virtio_driver(&vb_driver);
	if (ret)
		debugfs_remove_recursive(vb_dir);
	return ret;
}

static void __exit vb_exit(void)
{
	unregister_virtio_driver(&vb_driver);
	debugfs_remove_recursive(vb_dir);
}

module_init(vb_init);
module_exit(vb_exit);
MODULE_DEVICE_TABLE(virtio, vb_ids);
MODULE_DESCRIPTION("iovmm lab: DMA after unmap with an emulated virtio-blk");
MODULE_LICENSE("GPL");
