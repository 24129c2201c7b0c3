// SPDX-License-Identifier: GPL-2.0
/*
 * dma_flood - a guest that maps more memory for DMA than its host allows:
 * at load, DMA-maps up to `pages` distinct 4 KiB pages for the PCI
 * function `vendor:device` (default 8086:10d3, the lab's assigned e1000e)
 * through the ordinary DMA API, stops at the first mapping error, unmaps
 * everything again and prints one line:
 *
 *   dma_flood: wanted=N mapped=M failed_at=K ms=T
 *
 * (failed_at=-1 when every map succeeded). The device never sees the
 * addresses. In iovmm's cooperative mode (docs/coop.md) each page needs a
 * pin, and the host refuses pins beyond its budget: the map fails cleanly
 * and the guest goes on. Part of iovmm (guest-kernel-patches/README.md).
 */
#include <linux/dma-mapping.h>
#include <linux/ktime.h>
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>

static unsigned int pages = 8192;
module_param(pages, uint, 0444);
MODULE_PARM_DESC(pages, "pages to map (default 8192 = 32 MiB)");
static ushort vendor = 0x8086;
module_param(vendor, ushort, 0444);
static ushort device = 0x10d3;
module_param(device, ushort, 0444);

static int __init df_init(void)
{
	struct pci_dev *pdev;
	struct page **pg;
	dma_addr_t *addr;
	unsigned int i, mapped = 0;
	int failed_at = -1;
	ktime_t t0;

	pdev = pci_get_device(vendor, device, NULL);
	if (!pdev) {
		pr_info("dma_flood: no PCI function %04x:%04x\n", vendor, device);
		return -ENODEV;
	}
	pg = vcalloc(pages, sizeof(*pg));
	addr = vcalloc(pages, sizeof(*addr));
	if (!pg || !addr) {
		vfree(pg);
		vfree(addr);
		pci_dev_put(pdev);
		return -ENOMEM;
	}
	t0 = ktime_get();
	for (i = 0; i < pages; i++) {
		pg[i] = alloc_page(GFP_KERNEL);
		if (!pg[i])
			break;
		addr[i] = dma_map_page(&pdev->dev, pg[i], 0, PAGE_SIZE, DMA_TO_DEVICE);
		if (dma_mapping_error(&pdev->dev, addr[i])) {
			failed_at = i;
			break;
		}
		mapped++;
		cond_resched();
	}
	for (i = 0; i < mapped; i++)
		dma_unmap_page(&pdev->dev, addr[i], PAGE_SIZE, DMA_TO_DEVICE);
	for (i = 0; i < pages && pg[i]; i++)
		__free_page(pg[i]);
	pr_info("dma_flood: wanted=%u mapped=%u failed_at=%d ms=%lld\n", pages, mapped,
		failed_at, ktime_ms_delta(ktime_get(), t0));
	vfree(pg);
	vfree(addr);
	pci_dev_put(pdev);
	return 0;
}

static void __exit df_exit(void)
{
}

module_init(df_init);
module_exit(df_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("iovmm lab: map more pages for DMA than the host allows");
