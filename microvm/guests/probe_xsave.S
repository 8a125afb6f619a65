/* probe_xsave: do XSETBV, XSAVE and XRSTOR run? Linux saves every task's
 * FPU state with them. Exit 3 if CPUID does not offer XSAVE at all. */
        .include "pvh.inc"
main:
        movl $1, %eax
        xorl %ecx, %ecx
        cpuid
        btl $26, %ecx
        jnc no_xsave
        movq %cr4, %rax
        orq $((1 << 18) | (3 << 9)), %rax   /* OSXSAVE | OSFXSR | OSXMMEXCPT */
        movq %rax, %cr4
        xorl %ecx, %ecx
        movl $3, %eax                   /* x87 | SSE */
        xorl %edx, %edx
        xsetbv
        leaq area(%rip), %rdi
        movl $3, %eax
        xorl %edx, %edx
        xsave (%rdi)
        xrstor (%rdi)
        leaq msg(%rip), %rsi
        call puts
        xorl %eax, %eax
        ret
no_xsave:
        leaq none_msg(%rip), %rsi
        call puts
        movl $3, %eax
        ret
        .section .rodata
msg:      .asciz "xsave: ok\n"
none_msg: .asciz "xsave: not in CPUID\n"
        .section .bss
        .balign 64
area:   .skip 4096
