/*
 * /init of vfnic's initrd: load the root disk's modules, mount the root file
 * system, hand over to the real init.
 *
 * Debian's initramfs-tools initrd does the same through a shell, udev and
 * compressed modules; under TCG that took 5-8 s of every boot. This program,
 * with the few modules it needs stored uncompressed in /modules (loaded in
 * file-name order, dependencies first: images/initrd.py numbers them), takes
 * well under a second. Kernel command line used: root= (a /dev path),
 * rootfstype= (default ext4), ro/rw, init= (default /sbin/init).
 *
 * On any failure it prints why and exits; the kernel then panics and, with
 * panic=-1 and QEMU's -no-reboot, QEMU exits, so the host sees the failure
 * at once with this message at the end of the console log.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MODULE_DIR "/modules"
#define NEW_ROOT "/newroot"
#define ROOT_WAIT_SECONDS 30

struct boot_options {
	char root[256];
	char fstype[64];
	char init[256];
	int read_only;
};

static double uptime(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_BOOTTIME, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void fail(const char *what)
{
	fprintf(stderr, "vfnic-initrd: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void mount_or_fail(const char *source, const char *target, const char *type,
			  unsigned long flags)
{
	mkdir(target, 0755);
	if (mount(source, target, type, flags, NULL) < 0)
		fail(target);
}

static void open_console(void)
{
	int fd = open("/dev/console", O_RDWR);
	if (fd < 0)
		return;
	dup2(fd, 0);
	dup2(fd, 1);
	dup2(fd, 2);
	if (fd > 2)
		close(fd);
}

static void copy_value(char *dest, size_t size, const char *word, const char *key)
{
	size_t n = strlen(key);
	if (!strncmp(word, key, n))
		snprintf(dest, size, "%s", word + n);
}

static struct boot_options read_cmdline(void)
{
	struct boot_options options = { "/dev/vda", "ext4", "/sbin/init", 0 };
	char line[4096] = "";
	FILE *f = fopen("/proc/cmdline", "r");
	if (!f || !fgets(line, sizeof(line), f))
		fail("/proc/cmdline");
	fclose(f);
	for (char *word = strtok(line, " \n"); word; word = strtok(NULL, " \n")) {
		copy_value(options.root, sizeof(options.root), word, "root=");
		copy_value(options.fstype, sizeof(options.fstype), word, "rootfstype=");
		copy_value(options.init, sizeof(options.init), word, "init=");
		if (!strcmp(word, "ro"))
			options.read_only = 1;
		else if (!strcmp(word, "rw"))
			options.read_only = 0;
	}
	return options;
}

static void load_module(const char *name)
{
	char path[512];
	snprintf(path, sizeof(path), MODULE_DIR "/%s", name);
	int fd = open(path, O_RDONLY);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0)
		fail(path);
	char *image = malloc(st.st_size);
	if (!image || read(fd, image, st.st_size) != st.st_size)
		fail(path);
	close(fd);
	if (syscall(SYS_init_module, image, (unsigned long)st.st_size, "") < 0 && errno != EEXIST)
		fail(path);
	free(image);
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
	return strcmp((*a)->d_name, (*b)->d_name);
}

static void load_modules(void)
{
	struct dirent **entries;
	int count = scandir(MODULE_DIR, &entries, NULL, by_name);
	for (int i = 0; i < count; i++) {
		if (entries[i]->d_name[0] != '.')
			load_module(entries[i]->d_name);
		free(entries[i]);
	}
	if (count >= 0)
		free(entries);
}

static void wait_for(const char *device)
{
	struct stat st;
	double deadline = uptime() + ROOT_WAIT_SECONDS;
	while (stat(device, &st) < 0) {
		if (uptime() > deadline)
			fail(device);
		usleep(10000);
	}
}

static void move_into_new_root(const char *path)
{
	char target[256];
	snprintf(target, sizeof(target), NEW_ROOT "%s", path);
	if (mount(path, target, NULL, MS_MOVE, NULL) < 0)
		fail(target);
}

int main(void)
{
	mount_or_fail("devtmpfs", "/dev", "devtmpfs", MS_NOSUID);
	open_console();
	mount_or_fail("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC);
	mount_or_fail("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC);
	struct boot_options options = read_cmdline();

	load_modules();
	wait_for(options.root);
	mkdir(NEW_ROOT, 0755);
	if (mount(options.root, NEW_ROOT, options.fstype, options.read_only ? MS_RDONLY : 0, NULL) < 0)
		fail(options.root);
	printf("vfnic-initrd: mounted %s (%s) at %.2f s; starting %s\n", options.root,
	       options.fstype, uptime(), options.init);
	fflush(stdout);

	move_into_new_root("/dev");
	move_into_new_root("/proc");
	move_into_new_root("/sys");
	/* switch_root: the new root becomes / (the initramfs stays behind,
	 * unreachable; it is a few MiB). */
	if (chdir(NEW_ROOT) < 0 || mount(".", "/", NULL, MS_MOVE, NULL) < 0 || chroot(".") < 0 ||
	    chdir("/") < 0)
		fail("switching to the new root");
	char *argv[] = { options.init, NULL };
	execv(options.init, argv);
	fail(options.init);
	return 1;
}
