/*
 * vfnic-mmio: read, write and time accesses to a PCI BAR from a guest.
 *
 *   vfnic-mmio [-b BAR] BDF read OFFSET [WIDTH]
 *   vfnic-mmio [-b BAR] BDF write OFFSET VALUE [WIDTH]
 *   vfnic-mmio [-b BAR] BDF bench read|write OFFSET COUNT [WIDTH]
 *
 * BDF is a sysfs PCI address ("0000:01:00.0"; the domain may be left out),
 * BAR defaults to 0, WIDTH is 1, 2, 4 or 8 bytes (default 8), numbers are C
 * literals (0x.. for hex). `read` prints the value as 0x-prefixed hex;
 * `bench` prints one line of key=value pairs, ns_per_access among them.
 *
 * The BAR is mapped from /sys/bus/pci/devices/BDF/resourceN, which bypasses
 * any driver, so memory decoding is switched on in the COMMAND register first
 * if nobody has (what `setpci COMMAND=0x2` does). Built on the host with
 * `gcc -static -O2` and pushed into the guest, so the guest needs no
 * compiler.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PCI_COMMAND 0x04
#define PCI_COMMAND_MEMORY 0x2

static void die(const char *what)
{
	fprintf(stderr, "vfnic-mmio: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void usage(void)
{
	fprintf(stderr,
		"usage: vfnic-mmio [-b BAR] BDF read OFFSET [WIDTH]\n"
		"       vfnic-mmio [-b BAR] BDF write OFFSET VALUE [WIDTH]\n"
		"       vfnic-mmio [-b BAR] BDF bench read|write OFFSET COUNT [WIDTH]\n");
	exit(2);
}

static uint64_t number(const char *text)
{
	char *end;
	errno = 0;
	uint64_t value = strtoull(text, &end, 0);
	if (errno || *end || end == text) {
		fprintf(stderr, "vfnic-mmio: not a number: %s\n", text);
		exit(2);
	}
	return value;
}

static unsigned width_of(const char *text)
{
	unsigned width = text ? (unsigned)number(text) : 8;
	if (width != 1 && width != 2 && width != 4 && width != 8) {
		fprintf(stderr, "vfnic-mmio: width must be 1, 2, 4 or 8, not %u\n", width);
		exit(2);
	}
	return width;
}

static void device_path(char *path, size_t size, const char *bdf, const char *file)
{
	/* "01:00.0" has one colon; sysfs names always carry the domain. */
	const char *domain = strchr(bdf, ':') == strrchr(bdf, ':') ? "0000:" : "";
	snprintf(path, size, "/sys/bus/pci/devices/%s%s/%s", domain, bdf, file);
}

static void enable_memory_decoding(const char *bdf)
{
	char path[256];
	uint16_t command;
	device_path(path, sizeof(path), bdf, "config");
	int fd = open(path, O_RDWR);
	if (fd < 0)
		die(path);
	if (pread(fd, &command, sizeof(command), PCI_COMMAND) != sizeof(command))
		die("reading the COMMAND register");
	if (!(command & PCI_COMMAND_MEMORY)) {
		command |= PCI_COMMAND_MEMORY;
		if (pwrite(fd, &command, sizeof(command), PCI_COMMAND) != sizeof(command))
			die("enabling memory decoding");
	}
	close(fd);
}

struct bar {
	volatile uint8_t *base;
	size_t size;
};

static struct bar map_bar(const char *bdf, unsigned index)
{
	char path[256], file[32];
	struct stat st;
	snprintf(file, sizeof(file), "resource%u", index);
	device_path(path, sizeof(path), bdf, file);
	int fd = open(path, O_RDWR | O_SYNC);
	if (fd < 0 || fstat(fd, &st) < 0)
		die(path);
	void *base = mmap(NULL, st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (base == MAP_FAILED)
		die("mmap");
	close(fd);
	return (struct bar){ base, st.st_size };
}

static volatile void *at(struct bar bar, uint64_t offset, unsigned width)
{
	if (offset % width || offset + width > bar.size) {
		fprintf(stderr, "vfnic-mmio: offset 0x%" PRIx64 " (width %u) is unaligned or "
			"outside the %zu-byte BAR\n", offset, width, bar.size);
		exit(2);
	}
	return bar.base + offset;
}

static uint64_t mmio_read(volatile void *p, unsigned width)
{
	switch (width) {
	case 1: return *(volatile uint8_t *)p;
	case 2: return *(volatile uint16_t *)p;
	case 4: return *(volatile uint32_t *)p;
	default: return *(volatile uint64_t *)p;
	}
}

static void mmio_write(volatile void *p, unsigned width, uint64_t value)
{
	switch (width) {
	case 1: *(volatile uint8_t *)p = value; break;
	case 2: *(volatile uint16_t *)p = value; break;
	case 4: *(volatile uint32_t *)p = value; break;
	default: *(volatile uint64_t *)p = value; break;
	}
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

static void bench(volatile void *p, unsigned width, int reading, uint64_t offset, uint64_t count)
{
	uint64_t start = now_ns();
	for (uint64_t i = 0; i < count; i++) {
		if (reading)
			(void)mmio_read(p, width);
		else
			mmio_write(p, width, i);
	}
	/* A read after posted writes makes sure they all reached the device. */
	if (!reading)
		(void)mmio_read(p, width);
	uint64_t total = now_ns() - start;
	printf("op=%s offset=0x%" PRIx64 " width=%u count=%" PRIu64 " total_ns=%" PRIu64
	       " ns_per_access=%.1f\n", reading ? "read" : "write", offset, width, count, total,
	       count ? (double)total / count : 0.0);
}

int main(int argc, char **argv)
{
	unsigned index = 0;
	int opt;
	while ((opt = getopt(argc, argv, "b:")) != -1) {
		if (opt != 'b')
			usage();
		index = (unsigned)number(optarg);
	}
	argv += optind;
	argc -= optind;
	if (argc < 3)
		usage();
	const char *bdf = argv[0], *command = argv[1];

	enable_memory_decoding(bdf);
	struct bar bar = map_bar(bdf, index);
	if (!strcmp(command, "read") && argc <= 4) {
		unsigned width = width_of(argv[3]);
		uint64_t value = mmio_read(at(bar, number(argv[2]), width), width);
		printf("0x%0*" PRIx64 "\n", (int)width * 2, value);
	} else if (!strcmp(command, "write") && argc >= 4 && argc <= 5) {
		unsigned width = width_of(argv[4]);
		mmio_write(at(bar, number(argv[2]), width), width, number(argv[3]));
	} else if (!strcmp(command, "bench") && argc >= 5 && argc <= 6 &&
		   (!strcmp(argv[2], "read") || !strcmp(argv[2], "write"))) {
		unsigned width = width_of(argv[5]);
		uint64_t offset = number(argv[3]);
		bench(at(bar, offset, width), width, !strcmp(argv[2], "read"), offset, number(argv[4]));
	} else {
		usage();
	}
	return 0;
}
