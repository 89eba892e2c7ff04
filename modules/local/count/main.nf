process COUNT {
    tag "${model.subdir ? model.label + ': ' : ''}${ids.size() == 1 ? ids[0] : "${ids[0]}..${ids[-1]} (${ids.size()} images)"}"
    label 'cpu_small'
    conda "${projectDir}/envs/classical.yml"

    input:
    // model: [index, label, subdir, family]; ids[k]: counted in atlases[k] (rows[k]: [atlas_scale, voxel_size, atlas_offset]) from its record records[k]
    tuple val(model), val(ids), val(rows), path(atlases, stageAs: 'atlas/?/*'), path(records, stageAs: 'records/?/*')
    path regions      // the regions' hierarchy (--regions), or []
    val code          // digest of the Python files this step runs: a change reruns the task

    output:
    tuple val(model), val(ids), emit: counted    // each id's <outdir>/[<label>/]<id>.regions.parquet/.csv is written

    script:
    def args = task.ext.args ?: ''
    def staged_atlases = atlases instanceof List ? atlases : [atlases]
    def staged_records = records instanceof List ? records : [records]
    def items = ids.withIndex().collect { id, k -> [id, staged_records[k], staged_atlases[k], rows[k][0], rows[k][1], rows[k][2]].join('\t') }
    """
    cat > items.tsv <<'AIOD_ITEMS'
${items.join('\n')}
AIOD_ITEMS
    aiod count-results --items items.tsv ${regions ? "--regions ${regions}" : ''} ${args}
    """

    stub:
    """
    true
    """
}
