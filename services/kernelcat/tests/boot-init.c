/* A stand-in for the agent's initramfs-init mode (INITRAMFS-CONTRACT.md),
 * for kernelcat's boot test only: mount the pseudo filesystems, load every
 * module /etc/banger/modules lists with finit_module (the kernel
 * decompresses .ko.xz), report what the guest then has, power off. */
#define _GNU_SOURCE
#include <stdio.h>
#include <fcntl.h>
#include <unistd.h>
#include <string.h>
#include <errno.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <linux/vm_sockets.h>
int main(void){
  mount("proc","/proc","proc",0,0); mount("sysfs","/sys","sysfs",0,0); mount("devtmpfs","/dev","devtmpfs",0,0);
  int c=open("/dev/console",O_WRONLY); if(c>=0){dup2(c,1);dup2(c,2);}
  FILE*f=fopen("/etc/banger/modules","r"); char line[512]; int fails=0;
  while(f&&fgets(line,sizeof line,f)){ line[strcspn(line,"\n")]=0; if(!line[0]||line[0]=='#')continue;
    int fd=open(line,O_RDONLY); long r=syscall(SYS_finit_module,fd,"",4/*MODULE_INIT_COMPRESSED_FILE*/);
    if(r&&errno!=EEXIST){printf("SMOKE: FAILED loading %s: %s\n",line,strerror(errno));fails++;} else printf("SMOKE: loaded %s\n",line); close(fd);}
  struct stat st; for(int i=0;i<50&&stat("/dev/vda",&st);i++) usleep(100000);
  printf("SMOKE: /dev/vda %s\n", stat("/dev/vda",&st)==0?"present":"MISSING");
  printf("SMOKE: eth0 %s\n", access("/sys/class/net/eth0",F_OK)==0?"present":"MISSING");
  int s=socket(AF_VSOCK,SOCK_STREAM,0); printf("SMOKE: vsock socket %s\n", s>=0?"ok":strerror(errno));
  printf("SMOKE: done fails=%d\n",fails); fflush(stdout); sync(); reboot(RB_POWER_OFF); return 0;
}
