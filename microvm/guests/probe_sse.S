/* probe_sse: does an SSE instruction run? A full Linux user space needs it. */
        .include "pvh.inc"
main:
        movq %cr0, %rax
        andq $~(1 << 2), %rax           /* EM off */
        orq $(1 << 1), %rax             /* MP on */
        movq %rax, %cr0
        movq %cr4, %rax
        orq $(3 << 9), %rax             /* OSFXSR | OSXMMEXCPT */
        movq %rax, %cr4
        pxor %xmm0, %xmm0
        paddq %xmm0, %xmm0
        leaq msg(%rip), %rsi
        call puts
        xorl %eax, %eax
        ret
        .section .rodata
msg:    .asciz "sse: ok\n"
