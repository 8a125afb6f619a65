/*
 * memtouch: writes one qword into every 4 KiB page of guest RAM from
 * 16 MiB to 272 MiB (256 MiB in all), printing a dot per 16 MiB, then exits
 * with code 0. Boot it with --mem-mib 320 or more. Under a memory cgroup
 * smaller than that, the kernel's OOM killer ends the VMM part way: the
 * jail tests use it to show the cgroup wall holds.
 */
        .include "pvh.inc"

        .set START, 0x1000000           /* 16 MiB: above the image and stack */
        .set END, 0x11000000            /* 272 MiB */
        .set PAGE, 0x1000
        .set DOT_EVERY, 0x1000000       /* 16 MiB */

        .text
        .globl main
main:
        leaq start_msg(%rip), %rsi
        call puts
        movq $START, %rbx
1:      movq %rbx, (%rbx)               /* dirty the page */
        addq $PAGE, %rbx
        testq $(DOT_EVERY - 1), %rbx
        jnz 2f
        movw $SERIAL, %dx
        movb $'.', %al
        outb %al, %dx
2:      cmpq $END, %rbx
        jb 1b
        leaq done_msg(%rip), %rsi
        call puts
        xorl %eax, %eax
        ret

        .section .rodata
start_msg:
        .asciz "memtouch: start\n"
done_msg:
        .asciz "\nmemtouch: done\n"
