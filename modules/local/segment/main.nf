process SEGMENT {
    tag "${meta.id}:${meta.substack + 1}/${meta.n_substacks}"
    label 'gpu'

    input:
    tuple val(meta), path(image), path(plan)
    val code          // digest of the Python files this step runs: a change reruns the task

    output:
    tuple val(meta), path("substack_${meta.substack}.zarr"), emit: labels

    script:
    def args = task.ext.args ?: ''
    """
    aiod segment --plan ${plan} --image ${image} --index ${meta.substack} --out substack_${meta.substack}.zarr ${args}
    """

    stub:
    """
    mkdir substack_${meta.substack}.zarr
    """
}
