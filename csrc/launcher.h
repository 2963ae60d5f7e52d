/*
 * The sandbox launcher: fork, apply every restriction, execve.
 *
 * The Python side (src/sandbox/launcher.py) converts and allocates
 * everything before calling sandbox_spawn(); the child runs only raw system
 * calls on the flat arguments below.  The stage numbers are a contract with
 * the Python Stage enum: a child that fails writes one sandbox_failure
 * record (stage, errno) on the error pipe and exits with status 127.
 */
#ifndef SANDBOX_LAUNCHER_H
#define SANDBOX_LAUNCHER_H

enum sandbox_stage {
	SANDBOX_STAGE_SIGNALS = 1,
	SANDBOX_STAGE_SETSID = 2,
	SANDBOX_STAGE_PDEATHSIG = 3,
	SANDBOX_STAGE_DESCRIPTORS = 4,
	SANDBOX_STAGE_CHDIR = 5,
	SANDBOX_STAGE_RLIMITS = 6,
	SANDBOX_STAGE_CAPBSET = 7,
	SANDBOX_STAGE_SETGROUPS = 8,
	SANDBOX_STAGE_SETRESGID = 9,
	SANDBOX_STAGE_SETRESUID = 10,
	SANDBOX_STAGE_CHECK_DROP = 11,
	SANDBOX_STAGE_REARM_PDEATHSIG = 12,
	SANDBOX_STAGE_NO_NEW_PRIVS = 13,
	SANDBOX_STAGE_LANDLOCK = 14,
	SANDBOX_STAGE_SECCOMP = 15,
	SANDBOX_STAGE_EXECVE = 16,
	SANDBOX_STAGE_NETNS = 17,
};

struct sandbox_rlimit {
	int resource;
	unsigned long long soft;
	unsigned long long hard;
};

struct sandbox_failure {
	int stage;
	int error;
};

struct sandbox_spawn_args {
	const char *path;
	char *const *argv;
	char *const *envp;
	const char *cwd;
	/* fd_sources[i] becomes descriptor fd_targets[i]; all others close. */
	const int *fd_sources;
	const int *fd_targets;
	int fd_count;
	const struct sandbox_rlimit *rlimits;
	int rlimit_count;
	/* 0: keep the caller's ids, as a host that is not root must. */
	int change_ids;
	unsigned int uid;
	unsigned int gid;
	const unsigned int *groups;
	int group_count;
	/* 1: unshare into a new, empty network namespace (needs root). */
	int new_netns;
	/* -1: no Landlock ruleset to apply. */
	int landlock_fd;
	/* A struct sock_filter array; seccomp_len == 0: no filter. */
	const void *seccomp_filter;
	unsigned short seccomp_len;
	/* Write end of the O_CLOEXEC error pipe. */
	int error_fd;
	/* getpid() of the caller, for the parent-already-gone check. */
	int parent_pid;
};

/*
 * Returns 1 when this build applies the Linux stages (parent-death signal,
 * capability bounding set, no_new_privs, Landlock, seccomp) and the rings
 * wait on futexes.  Returns 0 for a portable build, as on macOS.  That
 * build skips the first three stages and fails the other two with ENOSYS.
 */
int sandbox_built_for_linux(void);

/* Returns the child's pid, or -errno when fork itself failed. */
int sandbox_spawn(const struct sandbox_spawn_args *args);

#endif
