// SPDX-License-Identifier: GPL-2.0
/*
 * viommu_test - a hostile and benchmarking driver for a virtio-iommu device.
 *
 * It binds to the virtio-iommu device in place of the stock driver (which
 * must not be loaded) and sends requests of its own: floods of valid 4 KiB
 * MAP/UNMAP pairs (rate measurement), requests the specification says the
 * device must refuse (reserved fields, reserved regions, truncated or empty
 * requests), and a request queue whose available index it breaks on purpose.
 * It registers no IOMMU with the kernel: the endpoint it attaches (a virtio
 * function whose driver is not loaded) never does DMA.
 *
 * Interface: debugfs file viommu_test/cmd. Write a command, read its result
 * (one "key=value ..." line per result):
 *   info             configuration and endpoint
 *   flood N SECS     MAP/UNMAP pairs, N requests per notification (1..128)
 *   spec             the specification probes, expected against got
 *   broken MS        publish an available index far ahead of the device,
 *                    notify, wait up to MS ms for a config interrupt
 *   reset            reset the device, set it up again, serve requests
 *
 * Part of iovmm (guest-kernel-patches/README.md tells how to build and load).
 */
#include <linux/completion.h>
#include <linux/debugfs.h>
#include <linux/delay.h>
#include <linux/ktime.h>
#include <linux/math64.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/scatterlist.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ids.h>
#include <linux/virtio_iommu.h>
#include <linux/virtio_ring.h>

#define VT_SLOTS 128		/* requests in flight: 2 descriptors each */
#define VT_EVENTS 8		/* event-queue buffers */
#define VT_OUT_MAX 96		/* device-readable bytes of a request */
#define VT_UNWRITTEN 0xff	/* status byte before the device answers */
#define VT_RESULT_MAX 4096
#define VT_REQ_TIMEOUT_NS (2ULL * NSEC_PER_SEC)
#define VT_PAGE 4096ULL

static ushort ep_vendor = 0x1af4;
module_param(ep_vendor, ushort, 0444);
MODULE_PARM_DESC(ep_vendor, "PCI vendor of the endpoint to attach (default virtio)");
static ushort ep_device = 0x1041;
module_param(ep_device, ushort, 0444);
MODULE_PARM_DESC(ep_device, "PCI device of the endpoint to attach (default virtio-net, modern)");

/* One request: what the device reads, and the status it writes. */
struct vt_slot {
	u8 out[VT_OUT_MAX];
	struct virtio_iommu_req_tail tail;
	/* Driver-private: the used length the device reported. */
	u32 used;
};

struct vt_dev {
	struct virtio_device *vdev;
	struct virtqueue *req_vq;
	struct virtqueue *evt_vq;
	struct vt_slot *slots;
	struct virtio_iommu_fault *events;
	u8 *probe_buf;		/* probe_size + tail */
	struct page *page;	/* what the MAPs point at */
	u64 page_mask, in_start, in_end, iova_base;
	u32 dom_start, dom_end, dom_a, dom_b, probe_size;
	u32 endpoint;
	char ep_name[32];
	bool have_ep;
	/* Requests were left with the device (timeout, broken ring). */
	bool stuck;
	atomic_t config_irqs;
	atomic_t events_seen;
	struct completion config_done;
};

static DEFINE_MUTEX(vt_lock);	/* commands, probe/remove, result */
static struct vt_dev *vt_the;
static char *vt_result;
static size_t vt_result_len;
static struct dentry *vt_dir;

static __printf(1, 2) void vt_out(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vt_result_len += vscnprintf(vt_result + vt_result_len,
				    VT_RESULT_MAX - vt_result_len, fmt, ap);
	va_end(ap);
}

static const char *vt_status_name(u8 s)
{
	static const char * const names[] = {
		"OK", "IOERR", "UNSUPP", "DEVERR", "INVAL", "RANGE",
		"NOENT", "FAULT", "NOMEM",
	};

	if (s < ARRAY_SIZE(names))
		return names[s];
	return s == VT_UNWRITTEN ? "unwritten" : "unknown";
}

/* ---- request encoding (returns the device-readable length) ---- */

static size_t vt_enc_attach(struct vt_slot *s, u32 dom, u32 ep, u8 resv0)
{
	struct virtio_iommu_req_attach *r = (void *)s->out;

	BUILD_BUG_ON(sizeof(*r) > VT_OUT_MAX);
	memset(r, 0, sizeof(*r));
	r->head.type = VIRTIO_IOMMU_T_ATTACH;
	r->domain = cpu_to_le32(dom);
	r->endpoint = cpu_to_le32(ep);
	r->reserved[0] = resv0;
	return sizeof(*r) - sizeof(r->tail);
}

static size_t vt_enc_map(struct vt_slot *s, u32 dom, u64 iova, u64 phys)
{
	struct virtio_iommu_req_map *r = (void *)s->out;

	BUILD_BUG_ON(sizeof(*r) > VT_OUT_MAX);
	memset(r, 0, sizeof(*r));
	r->head.type = VIRTIO_IOMMU_T_MAP;
	r->domain = cpu_to_le32(dom);
	r->virt_start = cpu_to_le64(iova);
	r->virt_end = cpu_to_le64(iova + VT_PAGE - 1);
	r->phys_start = cpu_to_le64(phys);
	r->flags = cpu_to_le32(VIRTIO_IOMMU_MAP_F_READ | VIRTIO_IOMMU_MAP_F_WRITE);
	return sizeof(*r) - sizeof(r->tail);
}

static size_t vt_enc_unmap(struct vt_slot *s, u32 dom, u64 iova)
{
	struct virtio_iommu_req_unmap *r = (void *)s->out;

	BUILD_BUG_ON(sizeof(*r) > VT_OUT_MAX);
	memset(r, 0, sizeof(*r));
	r->head.type = VIRTIO_IOMMU_T_UNMAP;
	r->domain = cpu_to_le32(dom);
	r->virt_start = cpu_to_le64(iova);
	r->virt_end = cpu_to_le64(iova + VT_PAGE - 1);
	return sizeof(*r) - sizeof(r->tail);
}

/* ---- queue handling ---- */

/*
 * Queues slot @s with @out_len device-readable bytes (a descriptor even for
 * 0) and, if @in_len, the status tail as device-writable. @no_out: no
 * readable descriptor at all.
 */
static int vt_add(struct vt_dev *d, struct vt_slot *s, size_t out_len,
		  size_t in_len, bool no_out)
{
	struct scatterlist out, in, *sgs[2];
	unsigned int n_out = 0, n_in = 0;

	s->tail.status = VT_UNWRITTEN;
	s->used = 0;
	if (!no_out) {
		sg_init_one(&out, s->out, out_len);
		sgs[n_out++] = &out;
	}
	if (in_len) {
		sg_init_one(&in, &s->tail, in_len);
		sgs[n_out + n_in++] = &in;
	}
	return virtqueue_add_sgs(d->req_vq, sgs, n_out, n_in, s, GFP_KERNEL);
}

/*
 * Busy-waits (the request queue has no callback, so the device is asked
 * not to interrupt) until @n requests are used, recording their used
 * lengths. A timeout leaves requests with the device: the queue is stuck
 * until a reset.
 */
static int vt_wait(struct vt_dev *d, unsigned int n)
{
	u64 deadline = ktime_get_ns() + VT_REQ_TIMEOUT_NS;
	struct vt_slot *s;
	unsigned int len;

	while (n) {
		s = virtqueue_get_buf(d->req_vq, &len);
		if (s) {
			s->used = len;
			n--;
			continue;
		}
		if (ktime_get_ns() > deadline) {
			d->stuck = true;
			return -ETIMEDOUT;
		}
		cpu_relax();
	}
	return 0;
}

/* One request, kicked and waited for; -errno or 0 (status in the slot). */
static int vt_one(struct vt_dev *d, struct vt_slot *s, size_t out_len,
		  size_t in_len, bool no_out)
{
	int ret = vt_add(d, s, out_len, in_len, no_out);

	if (ret)
		return ret;
	virtqueue_kick(d->req_vq);
	return vt_wait(d, 1);
}

static void vt_evt_done(struct virtqueue *vq)
{
	struct vt_dev *d = vq->vdev->priv;
	struct scatterlist sg;
	unsigned int len;
	void *buf;

	while ((buf = virtqueue_get_buf(vq, &len))) {
		atomic_inc(&d->events_seen);
		sg_init_one(&sg, buf, sizeof(struct virtio_iommu_fault));
		if (virtqueue_add_inbuf(vq, &sg, 1, buf, GFP_ATOMIC))
			break;
	}
	virtqueue_kick(vq);
}

static void vt_config_changed(struct virtio_device *vdev)
{
	struct vt_dev *d = vdev->priv;

	atomic_inc(&d->config_irqs);
	complete(&d->config_done);
}

static int vt_setup_queues(struct vt_dev *d)
{
	struct virtqueue_info info[] = {
		{ "request", NULL },	/* polled: no interrupts wanted */
		{ "event", vt_evt_done },
	};
	struct virtqueue *vqs[2];
	struct scatterlist sg;
	int i, ret;

	ret = virtio_find_vqs(d->vdev, 2, vqs, info, NULL);
	if (ret)
		return ret;
	d->req_vq = vqs[0];
	d->evt_vq = vqs[1];
	d->stuck = false;
	virtio_device_ready(d->vdev);
	for (i = 0; i < VT_EVENTS; i++) {
		sg_init_one(&sg, &d->events[i], sizeof(d->events[i]));
		if (virtqueue_add_inbuf(d->evt_vq, &sg, 1, &d->events[i], GFP_KERNEL))
			break;
	}
	virtqueue_kick(d->evt_vq);
	return 0;
}

/* ---- commands ---- */

static int vt_cmd_info(struct vt_dev *d)
{
	vt_out("info page_mask=0x%llx input=0x%llx-0x%llx domains=%u-%u probe_size=%u req_qsize=%u features=0x%llx endpoint=%s ep_id=0x%x iova_base=0x%llx\n",
	       d->page_mask, d->in_start, d->in_end, d->dom_start, d->dom_end,
	       d->probe_size, virtqueue_get_vring_size(d->req_vq),
	       d->vdev->features, d->have_ep ? d->ep_name : "none",
	       d->endpoint, d->iova_base);
	return 0;
}

/* ATTACH the endpoint to @dom; the status or a negative errno. */
static int vt_attach(struct vt_dev *d, u32 dom)
{
	struct vt_slot *s = &d->slots[0];
	int ret = vt_one(d, s, vt_enc_attach(s, dom, d->endpoint, 0),
			 sizeof(s->tail), false);

	return ret ? ret : s->tail.status;
}

/*
 * Valid MAP/UNMAP pairs of 4 KiB for @secs seconds, @batch requests per
 * notification, each batch waited for in full.
 */
static int vt_cmd_flood(struct vt_dev *d, unsigned int batch, unsigned int secs)
{
	u64 phys = page_to_phys(d->page), t0, ns, done = 0, kicks = 0, errors = 0;
	u8 first_error = VIRTIO_IOMMU_S_OK;
	unsigned int i, k = 0;
	int ret;

	if (!d->have_ep)
		return -ENODEV;
	if (batch < 1 || batch > VT_SLOTS || secs < 1 || secs > 60)
		return -EINVAL;
	ret = vt_attach(d, d->dom_a);
	if (ret) {
		vt_out("flood batch=%u attach=%s\n", batch, ret < 0 ? "timeout" : vt_status_name(ret));
		return ret < 0 ? ret : 0;
	}
	t0 = ktime_get_ns();
	do {
		for (i = 0; i < batch; i++, k++) {
			struct vt_slot *s = &d->slots[k % VT_SLOTS];
			/* 64 pages, each mapped then unmapped by consecutive requests. */
			u64 iova = d->iova_base + ((k / 2) % (VT_SLOTS / 2)) * VT_PAGE;
			size_t len = (k & 1) ? vt_enc_unmap(s, d->dom_a, iova)
					     : vt_enc_map(s, d->dom_a, iova, phys);

			ret = vt_add(d, s, len, sizeof(s->tail), false);
			if (ret)
				goto out;
		}
		virtqueue_kick(d->req_vq);
		kicks++;
		ret = vt_wait(d, batch);
		if (ret)
			goto out;
		for (i = k - batch; i != k; i++) {
			u8 st = d->slots[i % VT_SLOTS].tail.status;

			if (st != VIRTIO_IOMMU_S_OK) {
				if (!errors)
					first_error = st;
				errors++;
			}
		}
		done += batch;
		cond_resched();
		/* Stop only between pairs, so no mapping is left behind. */
	} while ((k & 1) || ktime_get_ns() - t0 < (u64)secs * NSEC_PER_SEC);
out:
	ns = ktime_get_ns() - t0;
	vt_out("flood batch=%u requests=%llu kicks=%llu ns=%llu rate=%llu errors=%llu first_error=%s result=%s\n",
	       batch, done, kicks, ns, ns ? div64_u64(done * NSEC_PER_SEC, ns) : 0,
	       errors, vt_status_name(first_error), ret ? "timeout" : "done");
	return 0;
}

/* One spec probe's line: name, what the spec wants, what the device did. */
static void vt_report(struct vt_dev *d, const char *name, const char *expect,
		      struct vt_slot *s, int ret, bool ok)
{
	if (ret) {
		/* No answer: say what the device's status register says. */
		vt_out("spec name=%s expect=%s status=timeout used=0 dev_status=0x%02x ok=0\n",
		       name, expect, d->vdev->config->get_status(d->vdev));
		return;
	}
	vt_out("spec name=%s expect=%s status=%s used=%u ok=%d\n", name, expect,
	       vt_status_name(s->tail.status), s->used, ok);
}

/* Answered INVAL, or nothing written (used length 0). */
static bool vt_inval_or_unwritten(struct vt_slot *s)
{
	return s->used == 0 ||
	       (s->used >= 1 && s->tail.status == VIRTIO_IOMMU_S_INVAL);
}

/*
 * PROBE the endpoint and find its MSI reserved region; false if there is
 * none (or the PROBE failed).
 */
static bool vt_probe_msi(struct vt_dev *d, u64 *start, u64 *end)
{
	struct virtio_iommu_req_probe *r = (void *)d->slots[0].out;
	struct scatterlist out, in, *sgs[2] = { &out, &in };
	struct virtio_iommu_req_tail *tail;
	size_t off = 0;
	bool found = false;
	unsigned int len;
	u64 deadline;
	void *tok;

	if (!d->probe_buf || !virtio_has_feature(d->vdev, VIRTIO_IOMMU_F_PROBE))
		return false;
	BUILD_BUG_ON(sizeof(*r) > VT_OUT_MAX);
	memset(r, 0, sizeof(*r));
	r->head.type = VIRTIO_IOMMU_T_PROBE;
	r->endpoint = cpu_to_le32(d->endpoint);
	memset(d->probe_buf, 0, d->probe_size + sizeof(*tail));
	tail = (void *)(d->probe_buf + d->probe_size);
	tail->status = VT_UNWRITTEN;
	sg_init_one(&out, r, sizeof(*r));
	sg_init_one(&in, d->probe_buf, d->probe_size + sizeof(*tail));
	if (virtqueue_add_sgs(d->req_vq, sgs, 1, 1, d->probe_buf, GFP_KERNEL))
		return false;
	virtqueue_kick(d->req_vq);
	deadline = ktime_get_ns() + VT_REQ_TIMEOUT_NS;
	while (!(tok = virtqueue_get_buf(d->req_vq, &len))) {
		if (ktime_get_ns() > deadline) {
			d->stuck = true;
			return false;
		}
		cpu_relax();
	}
	vt_out("probe status=%s used=%u\n", vt_status_name(tail->status), len);
	if (tail->status != VIRTIO_IOMMU_S_OK)
		return false;
	while (off + sizeof(struct virtio_iommu_probe_property) <= d->probe_size) {
		struct virtio_iommu_probe_property *p = (void *)(d->probe_buf + off);
		u16 type = le16_to_cpu(p->type) & VIRTIO_IOMMU_PROBE_T_MASK;
		size_t plen = le16_to_cpu(p->length);

		if (type == VIRTIO_IOMMU_PROBE_T_NONE)
			break;
		if (off + sizeof(*p) + plen > d->probe_size)
			break;
		if (type == VIRTIO_IOMMU_PROBE_T_RESV_MEM &&
		    plen >= sizeof(struct virtio_iommu_probe_resv_mem) - sizeof(*p)) {
			struct virtio_iommu_probe_resv_mem *m = (void *)p;

			vt_out("probe resv_mem subtype=%u start=0x%llx end=0x%llx\n",
			       m->subtype, le64_to_cpu(m->start), le64_to_cpu(m->end));
			if (m->subtype == VIRTIO_IOMMU_RESV_MEM_T_MSI && !found) {
				*start = le64_to_cpu(m->start);
				*end = le64_to_cpu(m->end);
				found = true;
			}
		}
		off += sizeof(*p) + plen;
	}
	return found;
}

/* The requests virtio 1.2 (5.13.6) says the device must refuse. */
static int vt_cmd_spec(struct vt_dev *d)
{
	struct vt_slot *s = &d->slots[0];
	u64 phys = page_to_phys(d->page), msi_start, msi_end;
	size_t len;
	bool ok;
	int ret;

	if (!d->have_ep)
		return -ENODEV;

	/* ATTACH with a non-zero reserved byte: MUST be INVAL. */
	ret = vt_one(d, s, vt_enc_attach(s, d->dom_b, d->endpoint, 1), sizeof(s->tail), false);
	vt_report(d, "attach-reserved", "INVAL", s, ret, s->tail.status == VIRTIO_IOMMU_S_INVAL);
	if (ret)
		return 0;

	/* From here on the endpoint is in dom_a, whatever the probe above did. */
	ret = vt_attach(d, d->dom_a);
	if (ret) {
		vt_out("spec setup attach=%s\n", ret < 0 ? "timeout" : vt_status_name(ret));
		return 0;
	}

	/* UNMAP with a non-zero reserved byte: INVAL as well. */
	len = vt_enc_unmap(s, d->dom_a, d->iova_base);
	((struct virtio_iommu_req_unmap *)s->out)->reserved[0] = 1;
	ret = vt_one(d, s, len, sizeof(s->tail), false);
	vt_report(d, "unmap-reserved", "INVAL", s, ret, s->tail.status == VIRTIO_IOMMU_S_INVAL);
	if (ret)
		return 0;

	/* MAP over the MSI doorbell PROBE reports: SHOULD be refused. */
	if (vt_probe_msi(d, &msi_start, &msi_end)) {
		ret = vt_one(d, s, vt_enc_map(s, d->dom_a, msi_start, phys), sizeof(s->tail), false);
		ok = s->used >= 1 && s->tail.status != VIRTIO_IOMMU_S_OK &&
		     s->tail.status != VT_UNWRITTEN;
		vt_report(d, "map-msi", "refused", s, ret, ok);
		if (ret)
			return 0;
		if (s->tail.status == VIRTIO_IOMMU_S_OK) {
			/* Accepted: take it back. */
			ret = vt_one(d, s, vt_enc_unmap(s, d->dom_a, msi_start), sizeof(s->tail), false);
			if (ret)
				return 0;
		}
	} else if (d->stuck) {
		vt_out("spec name=map-msi expect=refused status=timeout used=0 ok=0\n");
		return 0;
	} else {
		vt_out("spec name=map-msi expect=refused status=no-msi-region used=0 ok=0\n");
	}

	/* A MAP cut short after 8 bytes of its body: INVAL or unwritten. */
	vt_enc_map(s, d->dom_a, d->iova_base, phys);
	ret = vt_one(d, s, sizeof(struct virtio_iommu_req_head) + 8, sizeof(s->tail), false);
	vt_report(d, "truncated", "INVAL|used=0", s, ret, vt_inval_or_unwritten(s));
	if (ret)
		return 0;

	/* A zero-length device-readable descriptor and the status tail. */
	ret = vt_one(d, s, 0, sizeof(s->tail), false);
	vt_report(d, "empty", "INVAL|used=0", s, ret, vt_inval_or_unwritten(s));
	if (ret)
		return 0;

	/* No device-readable descriptor at all, only the tail. */
	ret = vt_one(d, s, 0, sizeof(s->tail), true);
	vt_report(d, "no-request", "INVAL|used=0", s, ret, vt_inval_or_unwritten(s));
	if (ret)
		return 0;

	/* A valid UNMAP with nowhere to write the status: used length 0. */
	ret = vt_one(d, s, vt_enc_unmap(s, d->dom_a, d->iova_base), 0, false);
	vt_report(d, "no-status", "used=0", s, ret, s->used == 0);
	if (ret)
		return 0;

	/* The device still serves valid requests afterwards. */
	ret = vt_one(d, s, vt_enc_map(s, d->dom_a, d->iova_base, phys), sizeof(s->tail), false);
	ok = !ret && s->tail.status == VIRTIO_IOMMU_S_OK;
	if (!ret) {
		ret = vt_one(d, s, vt_enc_unmap(s, d->dom_a, d->iova_base), sizeof(s->tail), false);
		ok = ok && !ret && s->tail.status == VIRTIO_IOMMU_S_OK;
	}
	vt_out("spec name=alive expect=OK status=%s used=%u ok=%d\n",
	       ret ? "timeout" : vt_status_name(s->tail.status), ret ? 0 : s->used, ok);
	return 0;
}

/*
 * Publishes an available index far ahead of the device (more than four
 * queue sizes: no driver can have made that many buffers available) and
 * notifies. A device that follows the spec marks itself DEVICE_NEEDS_RESET
 * and sends a configuration change notification.
 */
static int vt_cmd_broken(struct vt_dev *d, unsigned int wait_ms)
{
	const struct vring *vr = virtqueue_get_vring(d->req_vq);
	unsigned int qsize = virtqueue_get_vring_size(d->req_vq);
	__virtio16 *idx;
	u16 old, bogus;
	int irqs0 = atomic_read(&d->config_irqs);
	u64 t0, waited;
	long left;
	u8 status;

	if (virtio_has_feature(d->vdev, VIRTIO_F_RING_PACKED) || !vr)
		return -EOPNOTSUPP;
	if (wait_ms > 60000)
		return -EINVAL;
	reinit_completion(&d->config_done);
	/* The ring is ours (split layout); the device reads idx from memory. */
	idx = (__virtio16 *)&vr->avail->idx;
	old = virtio16_to_cpu(d->vdev, READ_ONCE(*idx));
	bogus = old + 4 * qsize + 7;
	virtio_wmb(true);
	WRITE_ONCE(*idx, cpu_to_virtio16(d->vdev, bogus));
	virtio_mb(true);
	d->stuck = true;
	t0 = ktime_get_ns();
	virtqueue_notify(d->req_vq);
	left = wait_for_completion_timeout(&d->config_done, msecs_to_jiffies(wait_ms));
	waited = ktime_get_ns() - t0;
	status = d->vdev->config->get_status(d->vdev);
	vt_out("broken qsize=%u avail_idx=%u->%u avail_addr=0x%llx config_irq=%d config_irq_ms=%llu status=0x%02x needs_reset=%d\n",
	       qsize, old, bogus, (u64)virtqueue_get_avail_addr(d->req_vq),
	       atomic_read(&d->config_irqs) > irqs0, left ? div_u64(waited, NSEC_PER_MSEC) : 0,
	       status, !!(status & VIRTIO_CONFIG_S_NEEDS_RESET));
	return 0;
}

/*
 * Device reset and the setup again (virtio 1.2 3.1.1: ACKNOWLEDGE, DRIVER,
 * features, FEATURES_OK, queues, DRIVER_OK), then valid requests.
 */
static int vt_cmd_reset(struct vt_dev *d)
{
	struct virtio_device *vdev = d->vdev;
	struct vt_slot *s = &d->slots[0];
	u64 t0 = ktime_get_ns(), reset_ns;
	int ret, att = -1, map = -1, unmap = -1;
	u8 status;

	virtio_reset_device(vdev);
	reset_ns = ktime_get_ns() - t0;
	vdev->config->del_vqs(vdev);
	d->req_vq = NULL;
	d->evt_vq = NULL;
	virtio_add_status(vdev, VIRTIO_CONFIG_S_ACKNOWLEDGE);
	virtio_add_status(vdev, VIRTIO_CONFIG_S_DRIVER);
	ret = vdev->config->finalize_features(vdev);
	if (!ret) {
		virtio_add_status(vdev, VIRTIO_CONFIG_S_FEATURES_OK);
		if (!(vdev->config->get_status(vdev) & VIRTIO_CONFIG_S_FEATURES_OK))
			ret = -ENODEV;
	}
	if (!ret)
		ret = vt_setup_queues(d);
	status = vdev->config->get_status(vdev);
	if (ret) {
		vt_out("reset reset_ms=%llu status=0x%02x setup=%d served=0\n",
		       div_u64(reset_ns, NSEC_PER_MSEC), status, ret);
		virtio_add_status(vdev, VIRTIO_CONFIG_S_FAILED);
		return 0;
	}
	att = vt_attach(d, d->dom_a);
	if (att == VIRTIO_IOMMU_S_OK) {
		ret = vt_one(d, s, vt_enc_map(s, d->dom_a, d->iova_base, page_to_phys(d->page)),
			     sizeof(s->tail), false);
		map = ret ? ret : s->tail.status;
	}
	if (map == VIRTIO_IOMMU_S_OK) {
		ret = vt_one(d, s, vt_enc_unmap(s, d->dom_a, d->iova_base), sizeof(s->tail), false);
		unmap = ret ? ret : s->tail.status;
	}
	vt_out("reset reset_ms=%llu status=0x%02x attach=%s map=%s unmap=%s served=%d\n",
	       div_u64(reset_ns, NSEC_PER_MSEC), status,
	       att < 0 ? "timeout" : vt_status_name(att),
	       map < 0 ? "-" : vt_status_name(map), unmap < 0 ? "-" : vt_status_name(unmap),
	       att == 0 && map == 0 && unmap == 0);
	return 0;
}

static ssize_t vt_cmd_write(struct file *f, const char __user *ubuf, size_t len,
			    loff_t *pos)
{
	unsigned int a, b;
	char buf[64];
	struct vt_dev *d;
	int ret;

	if (len >= sizeof(buf))
		return -EINVAL;
	if (copy_from_user(buf, ubuf, len))
		return -EFAULT;
	buf[len] = 0;
	strim(buf);

	mutex_lock(&vt_lock);
	vt_result_len = 0;
	vt_result[0] = 0;
	d = vt_the;
	if (!d) {
		ret = -ENODEV;
	} else if (!strcmp(buf, "reset")) {
		ret = vt_cmd_reset(d);
	} else if (d->stuck) {
		/* Requests are still with the device: only a reset helps. */
		vt_out("error=stuck (reset first)\n");
		ret = -EBUSY;
	} else if (!strcmp(buf, "info")) {
		ret = vt_cmd_info(d);
	} else if (sscanf(buf, "flood %u %u", &a, &b) == 2) {
		ret = vt_cmd_flood(d, a, b);
	} else if (!strcmp(buf, "spec")) {
		ret = vt_cmd_spec(d);
	} else if (sscanf(buf, "broken %u", &a) == 1) {
		ret = vt_cmd_broken(d, a);
	} else {
		ret = -EINVAL;
	}
	if (vt_result_len)
		pr_info("viommu_test: %s", vt_result);
	mutex_unlock(&vt_lock);
	return ret < 0 ? ret : len;
}

static ssize_t vt_cmd_read(struct file *f, char __user *ubuf, size_t len,
			   loff_t *pos)
{
	ssize_t ret;

	mutex_lock(&vt_lock);
	ret = simple_read_from_buffer(ubuf, len, pos, vt_result, vt_result_len);
	mutex_unlock(&vt_lock);
	return ret;
}

static const struct file_operations vt_cmd_fops = {
	.owner = THIS_MODULE,
	.write = vt_cmd_write,
	.read = vt_cmd_read,
	.llseek = default_llseek,
};

/* ---- the virtio driver ---- */

/* The endpoint: the first PCI function ep_vendor:ep_device; ID = its BDF. */
static void vt_find_endpoint(struct vt_dev *d)
{
	struct pci_dev *p = pci_get_device(ep_vendor, ep_device, NULL);

	if (!p)
		return;
	/*
	 * iovmm's VIOT (vmm/src/acpi.rs) and QEMU's give every PCI endpoint on
	 * segment 0 the endpoint ID bus << 8 | devfn, i.e. its BDF.
	 */
	d->endpoint = PCI_DEVID(p->bus->number, p->devfn);
	strscpy(d->ep_name, pci_name(p), sizeof(d->ep_name));
	d->have_ep = true;
	pci_dev_put(p);
}

static void vt_free(struct vt_dev *d)
{
	if (d->page)
		__free_page(d->page);
	kfree(d->probe_buf);
	kfree(d->events);
	kfree(d->slots);
	kfree(d);
}

static int vt_probe(struct virtio_device *vdev)
{
	struct vt_dev *d;
	int ret;

	if (!virtio_has_feature(vdev, VIRTIO_IOMMU_F_MAP_UNMAP))
		return -ENODEV;
	d = kzalloc(sizeof(*d), GFP_KERNEL);
	if (!d)
		return -ENOMEM;
	d->vdev = vdev;
	vdev->priv = d;
	init_completion(&d->config_done);

	virtio_cread_le(vdev, struct virtio_iommu_config, page_size_mask, &d->page_mask);
	d->in_end = U64_MAX;
	d->dom_end = U32_MAX;
	virtio_cread_le_feature(vdev, VIRTIO_IOMMU_F_INPUT_RANGE, struct virtio_iommu_config,
				input_range.start, &d->in_start);
	virtio_cread_le_feature(vdev, VIRTIO_IOMMU_F_INPUT_RANGE, struct virtio_iommu_config,
				input_range.end, &d->in_end);
	virtio_cread_le_feature(vdev, VIRTIO_IOMMU_F_DOMAIN_RANGE, struct virtio_iommu_config,
				domain_range.start, &d->dom_start);
	virtio_cread_le_feature(vdev, VIRTIO_IOMMU_F_DOMAIN_RANGE, struct virtio_iommu_config,
				domain_range.end, &d->dom_end);
	virtio_cread_le_feature(vdev, VIRTIO_IOMMU_F_PROBE, struct virtio_iommu_config,
				probe_size, &d->probe_size);
	/* Two domains inside the range (the first ID left alone when there is room). */
	d->dom_a = d->dom_start < d->dom_end ? d->dom_start + 1 : d->dom_start;
	d->dom_b = d->dom_a < d->dom_end ? d->dom_a + 1 : d->dom_a;
	/* 64 pages at 256 MiB (or the start of the input range), clear of MSI. */
	d->iova_base = max_t(u64, SZ_256M, ALIGN(d->in_start, SZ_2M));

	ret = -ENOMEM;
	d->slots = kcalloc(VT_SLOTS, sizeof(*d->slots), GFP_KERNEL);
	d->events = kcalloc(VT_EVENTS, sizeof(*d->events), GFP_KERNEL);
	if (d->probe_size && d->probe_size <= SZ_64K)
		d->probe_buf = kzalloc(d->probe_size + sizeof(struct virtio_iommu_req_tail),
				       GFP_KERNEL);
	d->page = alloc_page(GFP_KERNEL | __GFP_ZERO);
	if (!d->slots || !d->events || !d->page)
		goto err;
	if (d->probe_size > SZ_64K)
		d->probe_size = 0;
	ret = vt_setup_queues(d);
	if (ret)
		goto err;
	vt_find_endpoint(d);

	mutex_lock(&vt_lock);
	if (!vt_the)
		vt_the = d;
	mutex_unlock(&vt_lock);
	dev_info(&vdev->dev, "viommu_test: bound; endpoint %s id 0x%x\n",
		 d->have_ep ? d->ep_name : "none", d->endpoint);
	return 0;
err:
	vt_free(d);
	return ret;
}

static void vt_remove(struct virtio_device *vdev)
{
	struct vt_dev *d = vdev->priv;

	mutex_lock(&vt_lock);
	if (vt_the == d)
		vt_the = NULL;
	mutex_unlock(&vt_lock);
	virtio_reset_device(vdev);
	vdev->config->del_vqs(vdev);
	vt_free(d);
}

static const struct virtio_device_id vt_id_table[] = {
	{ VIRTIO_ID_IOMMU, VIRTIO_DEV_ANY_ID },
	{ 0 },
};

static unsigned int vt_features[] = {
	VIRTIO_IOMMU_F_INPUT_RANGE,
	VIRTIO_IOMMU_F_DOMAIN_RANGE,
	VIRTIO_IOMMU_F_MAP_UNMAP,
	VIRTIO_IOMMU_F_PROBE,
};

static struct virtio_driver vt_driver = {
	.driver.name = KBUILD_MODNAME,
	.id_table = vt_id_table,
	.feature_table = vt_features,
	.feature_table_size = ARRAY_SIZE(vt_features),
	.probe = vt_probe,
	.remove = vt_remove,
	.config_changed = vt_config_changed,
};

static int __init vt_init(void)
{
	int ret;

	vt_result = kzalloc(VT_RESULT_MAX, GFP_KERNEL);
	if (!vt_result)
		return -ENOMEM;
	vt_dir = debugfs_create_dir("viommu_test", NULL);
	debugfs_create_file("cmd", 0600, vt_dir, NULL, &vt_cmd_fops);
	ret = register_virtio_driver(&vt_driver);
	if (ret) {
		debugfs_remove_recursive(vt_dir);
		kfree(vt_result);
	}
	return ret;
}

static void __exit vt_exit(void)
{
	debugfs_remove_recursive(vt_dir);
	unregister_virtio_driver(&vt_driver);
	kfree(vt_result);
}

module_init(vt_init);
module_exit(vt_exit);
MODULE_DESCRIPTION("iovmm lab: hostile and benchmarking virtio-iommu driver");
MODULE_LICENSE("GPL");
